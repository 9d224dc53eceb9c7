// Thread counts for kiln's programs. Debian's libtorch starts with one intra-op thread on these
// machines while OpenBLAS runs its own pool on every core; the two pools then fight over the
// cores. kiln's mains call this once: torch gets the cores, OpenBLAS runs inside torch's threads.
#pragma once

namespace kiln {

// Sets torch's intra-op threads to `requested` when > 0, else to $KILN_THREADS, else to the number
// of cores, and, when more than one, OpenBLAS's own pool to one thread (if OpenBLAS is the BLAS).
// Returns torch's thread count. (kiln train --nproc N gives each process cores / N.)
int configure_threads(int requested = 0);

// Sets OpenBLAS's own thread pool size; false when OpenBLAS is not the BLAS in use.
bool set_blas_threads(int threads);

}  // namespace kiln
