#include "util/threads.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>

#include <cstdlib>
#include <string>
#include <thread>

#include <fmt/format.h>

#include "util/error.h"
#include "util/whole_number.h"

namespace kiln {

int configure_threads(int requested) {
  int threads = static_cast<int>(std::thread::hardware_concurrency());
  if (requested > 0) {
    threads = requested;
  } else if (const char* env = std::getenv("KILN_THREADS")) {
    const auto parsed = parse_whole_number(env);
    if (!parsed || *parsed < 1 || *parsed > 4096)
      throw Error(fmt::format("KILN_THREADS={} is not a number of threads (a whole number from 1); unset it to "
                              "use every core",
                              env));
    threads = static_cast<int>(*parsed);
  }
  if (threads < 1) threads = 1;
  at::set_num_threads(threads);
  // Measured on the 2-core CI machine: SD 1.5 UNet at 256 px, 2.8 s (torch 1 thread, OpenBLAS 2)
  // vs 3.2 s (both 2) vs 2.2 s (torch 2, OpenBLAS 1). Looked up at run time: libtorch does not
  // link OpenBLAS directly, and another BLAS may stand behind libblas.so.3.
  if (threads > 1 && std::getenv("OPENBLAS_NUM_THREADS") == nullptr) set_blas_threads(1);
  return threads;
}

bool set_blas_threads(int threads) {
  using SetThreads = void (*)(int);
  auto set = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  if (set) set(threads);
  return set != nullptr;
}

}  // namespace kiln
