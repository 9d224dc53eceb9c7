#include "train/process_launcher.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <thread>

#include "util/error.h"

extern char** environ;

namespace kiln {

namespace {

// Signal dispositions are process-wide and a handler can take no arguments, so the handler reaches
// the launcher through these statics. They are only live during launch_local_processes, which
// installs the handler for the call and restores the previous one before returning.
std::atomic<unsigned> g_pending_signals{0};  // bit n: signal n arrived and is not yet forwarded
std::atomic<bool> g_launch_running{false};   // one launch at a time: the handler has one mailbox

void record_signal(int signal_number) { g_pending_signals.fetch_or(1u << signal_number); }

constexpr int kForwardedSignals[] = {SIGINT, SIGTERM};

// Installs record_signal for SIGINT and SIGTERM for its lifetime; restores the previous handlers.
class SignalForwarding {
 public:
  SignalForwarding() {
    if (g_launch_running.exchange(true))
      throw Error("launch_local_processes: already running in this process");
    g_pending_signals = 0;
    struct sigaction action {};
    action.sa_handler = record_signal;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;
    for (int i = 0; i < 2; ++i) sigaction(kForwardedSignals[i], &action, &previous_[i]);
  }
  ~SignalForwarding() {
    for (int i = 0; i < 2; ++i) sigaction(kForwardedSignals[i], &previous_[i], nullptr);
    g_launch_running = false;
  }
  SignalForwarding(const SignalForwarding&) = delete;
  SignalForwarding& operator=(const SignalForwarding&) = delete;

  unsigned take() { return g_pending_signals.exchange(0); }

 private:
  struct sigaction previous_[2];
};

// The children of one launch: they share the process group `pgid` (the first child's pid).
struct Job {
  pid_t pgid = 0;
  std::vector<pid_t> running;
  int first_failure = 0;                                         // exit code of the first failure
  std::optional<std::chrono::steady_clock::time_point> kill_at;  // set once SIGTERM went out
  bool killed = false;                                           // SIGKILL went out
};

void signal_group(const Job& job, int signal_number) {
  // pgid 0 would mean our own group: never signal before the first child exists.
  if (job.pgid > 0) kill(-job.pgid, signal_number);
}

void stop_all(Job& job, std::chrono::seconds grace) {
  if (job.kill_at) return;
  signal_group(job, SIGTERM);
  job.kill_at = std::chrono::steady_clock::now() + grace;
}

int exit_code_of(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

// Waits until every child has exited, forwarding signals and stopping the rest after a failure.
// Polls: signals may land on any of this process's threads (libtorch starts several), so a
// blocking waitpid() here would not be interrupted by them.
void wait_all(Job& job, SignalForwarding& signals, std::chrono::seconds grace) {
  while (!job.running.empty()) {
    const unsigned pending = signals.take();
    for (int signal_number : kForwardedSignals) {
      if (pending & (1u << signal_number)) signal_group(job, signal_number);
    }
    for (auto it = job.running.begin(); it != job.running.end();) {
      int status = 0;
      const pid_t result = waitpid(*it, &status, WNOHANG);
      if (result == 0 || (result < 0 && errno == EINTR)) {
        ++it;
        continue;
      }
      // result < 0 otherwise (ECHILD): someone else reaped it; its status is lost.
      if (result == *it) {
        const int code = exit_code_of(status);
        if (code != 0 && job.first_failure == 0) {
          job.first_failure = code;
          stop_all(job, grace);
        }
      }
      it = job.running.erase(it);
    }
    if (job.kill_at && !job.killed && std::chrono::steady_clock::now() >= *job.kill_at) {
      signal_group(job, SIGKILL);
      job.killed = true;
    }
    if (!job.running.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// posix_spawnp in a new or an existing process group, with the forwarded signals at their default
// action and none blocked (this process's threads may block some). Returns the errno on failure.
int spawn(const std::vector<std::string>& command, const std::vector<std::string>& environment, pid_t pgid,
          pid_t* pid) {
  std::vector<char*> argv;
  for (const auto& arg : command) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (const auto& entry : environment) envp.push_back(const_cast<char*>(entry.c_str()));
  envp.push_back(nullptr);

  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  sigset_t defaults;
  sigemptyset(&defaults);
  for (int signal_number : kForwardedSignals) sigaddset(&defaults, signal_number);
  posix_spawnattr_setsigdefault(&attributes, &defaults);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attributes, &none);
  posix_spawnattr_setpgroup(&attributes, pgid);
  posix_spawnattr_setflags(&attributes,
                           POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
  const int error = posix_spawnp(pid, argv[0], nullptr, &attributes, argv.data(), envp.data());
  posix_spawnattr_destroy(&attributes);
  return error;
}

// This process's environment with torchrun's variables for `rank` put in place.
std::vector<std::string> child_environment(const LaunchOptions& options, int rank, int port, int threads) {
  std::vector<std::pair<std::string, std::string>> ours = {
      {"RANK", std::to_string(rank)},
      {"LOCAL_RANK", std::to_string(rank)},
      {"WORLD_SIZE", std::to_string(options.nproc)},
      {"LOCAL_WORLD_SIZE", std::to_string(options.nproc)},
      {"MASTER_ADDR", options.master_addr},
      {"MASTER_PORT", std::to_string(port)},
  };
  // A KILN_THREADS the user set wins: it is how they split the cores differently.
  if (std::getenv("KILN_THREADS") == nullptr) ours.emplace_back("KILN_THREADS", std::to_string(threads));

  std::vector<std::string> environment;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    const std::string text(*entry);
    const std::string name = text.substr(0, text.find('='));
    bool replaced = false;
    for (const auto& [key, value] : ours) replaced = replaced || key == name;
    if (!replaced) environment.push_back(text);
  }
  for (const auto& [key, value] : ours) environment.push_back(key + "=" + value);
  return environment;
}

}  // namespace

int pick_free_port(const std::string& addr) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(addr.c_str(), "0", &hints, &found) != 0 || found == nullptr) {
    throw Error("cannot resolve the master address '" + addr + "'");
  }
  int port = -1;
  const int fd = socket(found->ai_family, found->ai_socktype, found->ai_protocol);
  if (fd >= 0 && bind(fd, found->ai_addr, found->ai_addrlen) == 0) {
    sockaddr_storage bound{};
    socklen_t length = sizeof(bound);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &length) == 0) {
      port = bound.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                                         : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    }
  }
  const int bind_error = errno;
  if (fd >= 0) close(fd);
  freeaddrinfo(found);
  if (port <= 0) throw Error("cannot find a free port on '" + addr + "': " + std::strerror(bind_error));
  return port;
}

int launch_local_processes(const LaunchOptions& options) {
  if (options.nproc < 1) throw Error("--nproc must be at least 1, got " + std::to_string(options.nproc));
  if (options.command.empty() || options.command[0].empty())
    throw Error("launch_local_processes: no program to run");
  if (options.master_addr.empty()) throw Error("launch_local_processes: the master address is empty");
  if (options.master_port < 0 || options.master_port > 65535) {
    throw Error("master port " + std::to_string(options.master_port) +
                " is not a port (1-65535, or 0 for any)");
  }
  const int port = options.master_port != 0 ? options.master_port : pick_free_port(options.master_addr);
  int threads = options.threads_per_process;
  if (threads <= 0) threads = static_cast<int>(std::thread::hardware_concurrency()) / options.nproc;
  if (threads < 1) threads = 1;

  SignalForwarding signals;
  Job job;
  for (int rank = 0; rank < options.nproc; ++rank) {
    pid_t pid = 0;
    const int error = spawn(options.command, child_environment(options, rank, port, threads), job.pgid, &pid);
    if (error != 0) {
      // Ranks already started would wait for this one at the rendezvous until their timeout.
      stop_all(job, options.termination_grace);
      wait_all(job, signals, options.termination_grace);
      throw Error("cannot start '" + options.command[0] + "' (rank " + std::to_string(rank) +
                  "): " + std::strerror(error));
    }
    if (job.pgid == 0) job.pgid = pid;
    job.running.push_back(pid);
  }
  wait_all(job, signals, options.termination_grace);
  return job.first_failure;
}

}  // namespace kiln
