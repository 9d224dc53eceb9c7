// Starts the processes of a one-machine data-parallel job (`kiln train --nproc N`), as torchrun
// would: each gets torchrun's variables (see distributed.h), and one failure stops them all.
#pragma once
#include <chrono>
#include <string>
#include <vector>

namespace kiln {

struct LaunchOptions {
  int nproc = 1;                     // processes to start, ranks 0 .. nproc-1
  std::vector<std::string> command;  // program (path, or a name looked up in PATH) + arguments, same for all
  std::string master_addr = "127.0.0.1";       // exported as MASTER_ADDR: where rank 0 serves the store
  int master_port = 0;                         // exported as MASTER_PORT; 0: a free port on master_addr
  int threads_per_process = 0;                 // exported as KILN_THREADS unless that is already set;
                                               // 0: hardware threads / nproc, at least 1
  std::chrono::seconds termination_grace{10};  // after the first failure: SIGTERM to the others,
                                               // SIGKILL to those still alive after this long
};

// Starts options.nproc copies of options.command with RANK = LOCAL_RANK = i, WORLD_SIZE =
// LOCAL_WORLD_SIZE = nproc, MASTER_ADDR, MASTER_PORT (and KILN_THREADS) added to this process's
// environment, and waits for all of them. The children share a process group of their own, so a
// terminal's Ctrl-C reaches them once, through this process: SIGINT and SIGTERM received during the
// call are forwarded to the group (the previous handlers are restored on return). When a child exits
// non-zero or dies from a signal, the others get SIGTERM, then SIGKILL after termination_grace.
// Returns 0 when every child succeeded, else the first failure's exit code (128 + signal number for
// a signal). Throws kiln::Error for bad options or a program that cannot be started.
int launch_local_processes(const LaunchOptions& options);

// A TCP port on `addr` that nothing listens on at the time of the call (the kernel's choice).
int pick_free_port(const std::string& addr);

}  // namespace kiln
