// Giving freed heap memory back to the system.
#pragma once

namespace kiln {

// Returns the C library's free heap pages to the system (glibc's malloc_trim; nothing elsewhere).
// Checkpoints and validation allocate large short-lived buffers whose freed pages glibc would keep;
// called after such phases, it hands them back. It does not make the resident size perfectly flat:
// over 1,000 tiny-model steps it still moved 0-19 MiB after saves while the allocated memory stayed
// constant (tests/test_long_run.cpp), pages kept or mapped elsewhere.
void release_free_memory();

}  // namespace kiln
