// Giving freed heap memory back to the system.
#pragma once

namespace kiln {

// Returns the C library's free heap pages to the system (glibc's malloc_trim; nothing elsewhere).
// Checkpoints and validation allocate large short-lived buffers; glibc keeps the freed pages, and
// where they sit between live blocks the process's resident size creeps up by a few MiB per save
// over a long run. Called after such phases, it keeps a long run's memory flat.
void release_free_memory();

}  // namespace kiln
