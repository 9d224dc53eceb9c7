// Data-parallel training across processes: each process holds a full model copy, computes the
// gradients of its own share of the batch, and the gradients are summed across processes before
// the optimizer step. The collectives are torch's c10d (Gloo on CPU, NCCL on CUDA), rendezvous
// through c10d's TCPStore, so kiln speaks the same protocol as torchrun and never its own.
// c10d stays out of this header: only distributed.cpp is compiled with the backend defines.
#pragma once
#include <torch/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace kiln {

// Where this process stands in the job, in torchrun's variables.
struct DistributedEnvironment {
  int rank = 0;                           // RANK: 0 .. world_size-1; rank 0 hosts the store
  int world_size = 1;                     // WORLD_SIZE: number of processes in the job
  int local_rank = 0;                     // LOCAL_RANK: index on this machine (picks the GPU)
  std::string master_addr = "127.0.0.1";  // MASTER_ADDR: where rank 0's TCPStore listens
  int master_port = 29500;                // MASTER_PORT: its port (torchrun's default)
  std::string gloo_socket_ifname;         // GLOO_SOCKET_IFNAME: interface Gloo binds; empty: chosen
                                          // from master_addr (loopback) or this host's name
};

// Reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT and GLOO_SOCKET_IFNAME. None set:
// a single process. LOCAL_RANK absent: the rank (one machine). Malformed or inconsistent values
// (not a whole number, RANK >= WORLD_SIZE, RANK missing while WORLD_SIZE > 1, port outside
// 1-65535): kiln::Error naming the variable and its value, as in "RANK=2 is not below WORLD_SIZE=2".
DistributedEnvironment read_distributed_environment();

// Whether this build can run collectives between processes for tensors on `device_type`
// (Gloo for CPU, NCCL for CUDA), so a launcher can refuse before it starts any process.
bool has_collective_backend(torch::DeviceType device_type);

// This process's membership in the data-parallel group; one per process, made by join().
class DataParallelGroup {
 public:
  // world_size 1: no store, no sockets, and every operation below is a no-op. Otherwise rendezvous
  // through a TCPStore at master_addr:master_port (rank 0 serves it and waits for all ranks), then
  // Gloo for a CPU device, NCCL for a CUDA one. `timeout` bounds the rendezvous and each collective.
  // Throws kiln::Error when the build lacks the backend or the rendezvous fails.
  static std::unique_ptr<DataParallelGroup> join(const DistributedEnvironment& env, torch::Device device,
                                                 std::chrono::seconds timeout);
  ~DataParallelGroup();
  DataParallelGroup(const DataParallelGroup&) = delete;
  DataParallelGroup& operator=(const DataParallelGroup&) = delete;

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  bool is_main() const { return rank_ == 0; }  // the rank that logs, validates and saves
  torch::Device device() const { return device_; }

  // Sums each parameter's .grad() across ranks, in place. Gradients travel packed in flat buffers
  // of about `bucket_bytes` (one dtype and device per buffer), so a UNet's ~700 tensors take a few
  // dozen collectives rather than 700. A parameter without a gradient gets a zero gradient first, so
  // that every rank issues the same collectives (a mismatch would hang all ranks). Every rank must
  // pass the same parameters in the same order. Sum, not mean: the caller scales the loss.
  void all_reduce_gradients(const std::vector<torch::Tensor>& parameters,
                            int64_t bucket_bytes = int64_t{25} << 20);

  // Sums `tensor` across ranks, in place (the handle is const as in torch's own in-place ops).
  void all_reduce_sum(const torch::Tensor& tensor);

  // Overwrites each tensor with rank 0's values, in place (initial weights, a resumed state).
  void broadcast_from_main(const std::vector<torch::Tensor>& tensors,
                           int64_t bucket_bytes = int64_t{25} << 20);

  // True on every rank when `flag` is true on any: a Ctrl-C seen by one rank stops all of them
  // at the same step instead of leaving the others waiting in a collective.
  bool any(bool flag);

  // Returns once every rank has reached it.
  void barrier();

 private:
  struct Backend;  // c10d's store and process group, defined in distributed.cpp
  DataParallelGroup(int rank, int world_size, torch::Device device, std::unique_ptr<Backend> backend);

  int rank_;
  int world_size_;
  torch::Device device_;
  std::unique_ptr<Backend> backend_;  // null when world_size is 1
};

}  // namespace kiln
