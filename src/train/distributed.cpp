#include "train/distributed.h"

#include <torch/utils.h>
#include <torch/version.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <iterator>
#include <optional>
#include <string_view>
#include <utility>

#if defined(KILN_HAVE_GLOO) || defined(KILN_HAVE_NCCL)
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif
#ifdef KILN_HAVE_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef KILN_HAVE_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "util/error.h"
#include "util/whole_number.h"

namespace kiln {

namespace {

[[noreturn]] void throw_env_error(const char* name, const std::string& value, const std::string& problem) {
  throw Error("distributed environment: " + std::string(name) + "=" + value + " " + problem);
}

// The variable as a whole number, or nullopt when it is not set.
std::optional<int> int_variable(const char* name) {
  const char* raw = std::getenv(name);
  if (raw == nullptr) return std::nullopt;
  const auto value = parse_whole_number(raw);
  if (!value || *value < INT32_MIN || *value > INT32_MAX) throw_env_error(name, raw, "is not a whole number");
  return static_cast<int>(*value);
}

[[maybe_unused]] bool is_loopback(const std::string& addr) {
  return addr == "localhost" || addr.rfind("127.", 0) == 0 || addr == "::1";
}

}  // namespace

DistributedEnvironment read_distributed_environment() {
  DistributedEnvironment env;
  std::optional<int> world = int_variable("WORLD_SIZE");
  std::optional<int> rank = int_variable("RANK");
  std::optional<int> local_rank = int_variable("LOCAL_RANK");
  std::optional<int> port = int_variable("MASTER_PORT");

  if (world) {
    if (*world < 1)
      throw_env_error("WORLD_SIZE", std::to_string(*world), "is not a positive number of processes");
    env.world_size = *world;
  }
  if (rank) {
    if (*rank < 0 || *rank >= env.world_size) {
      throw_env_error("RANK", std::to_string(*rank),
                      "is not below WORLD_SIZE=" + std::to_string(env.world_size) + " (or is negative)");
    }
    env.rank = *rank;
  } else if (env.world_size > 1) {
    // Guessing rank 0 would make two processes both serve the store.
    throw_env_error("RANK", "(unset)", "must be set when WORLD_SIZE=" + std::to_string(env.world_size));
  }
  env.local_rank = local_rank.value_or(env.rank);
  if (env.local_rank < 0 || env.local_rank >= env.world_size) {
    throw_env_error("LOCAL_RANK", std::to_string(env.local_rank),
                    "is not below WORLD_SIZE=" + std::to_string(env.world_size) + " (or is negative)");
  }
  if (const char* addr = std::getenv("MASTER_ADDR")) {
    if (*addr == '\0') throw_env_error("MASTER_ADDR", "", "is empty");
    env.master_addr = addr;
  }
  if (port) {
    if (*port < 1 || *port > 65535)
      throw_env_error("MASTER_PORT", std::to_string(*port), "is not a port (1-65535)");
    env.master_port = *port;
  }
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME")) env.gloo_socket_ifname = ifname;
  return env;
}

bool has_collective_backend(torch::DeviceType device_type) {
  if (device_type == torch::kCPU) {
#ifdef KILN_HAVE_GLOO
    return true;
#endif
  }
  if (device_type == torch::kCUDA) {
#ifdef KILN_HAVE_NCCL
    return true;
#endif
  }
  return false;
}

#if defined(KILN_HAVE_GLOO) || defined(KILN_HAVE_NCCL)
// Torch 2 split the process group: the backends (Gloo, NCCL) became c10d::Backend, and
// ProcessGroup a dispatcher over them. Holding the backend directly keeps the same calls.
#if TORCH_VERSION_MAJOR >= 2
using CollectiveBackend = c10d::Backend;
#else
using CollectiveBackend = c10d::ProcessGroup;
#endif

struct DataParallelGroup::Backend {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<CollectiveBackend> collectives;
};
#else
struct DataParallelGroup::Backend {};
#endif

DataParallelGroup::DataParallelGroup(int rank, int world_size, torch::Device device,
                                     std::unique_ptr<Backend> backend)
    : rank_(rank), world_size_(world_size), device_(device), backend_(std::move(backend)) {}

DataParallelGroup::~DataParallelGroup() = default;

std::unique_ptr<DataParallelGroup> DataParallelGroup::join(const DistributedEnvironment& env,
                                                           torch::Device device,
                                                           std::chrono::seconds timeout) {
  TORCH_CHECK(env.world_size >= 1 && env.rank >= 0 && env.rank < env.world_size,
              "DataParallelGroup::join: rank ", env.rank, " of world size ", env.world_size);
  TORCH_CHECK(timeout.count() > 0, "DataParallelGroup::join: the timeout must be positive");
  if (env.world_size == 1) {
    return std::unique_ptr<DataParallelGroup>(new DataParallelGroup(0, 1, device, nullptr));
  }
  if (!device.is_cpu() && !device.is_cuda()) {
    throw Error("distributed training runs on CPU or CUDA devices, not " + device.str());
  }
  if (!has_collective_backend(device.type())) {
    throw Error(std::string("kiln was built without ") + (device.is_cpu() ? "gloo" : "NCCL") +
                ": it cannot run " + std::to_string(env.world_size) + " processes on " + device.str() +
                (device.is_cpu() ? " (install libgloo-dev and reconfigure)" : ""));
  }
#if defined(KILN_HAVE_GLOO) || defined(KILN_HAVE_NCCL)
  auto backend = std::make_unique<Backend>();
  const std::string where = env.master_addr + ":" + std::to_string(env.master_port);
  try {
    c10d::TCPStoreOptions store_options;
    store_options.port = static_cast<std::uint16_t>(env.master_port);
    store_options.isServer = env.rank == 0;
    store_options.numWorkers = static_cast<std::size_t>(env.world_size);
    store_options.waitWorkers = true;  // rank 0 returns once every rank has connected
    store_options.timeout = timeout;
    backend->store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, store_options);
  } catch (const std::exception& e) {
    throw Error("rank " + std::to_string(env.rank) + " of " + std::to_string(env.world_size) +
                " could not meet the others at " + where + " within " + std::to_string(timeout.count()) +
                " s: " + e.what());
  }
  try {
    if (device.is_cpu()) {
#ifdef KILN_HAVE_GLOO
      auto options = c10d::ProcessGroupGloo::Options::create();
      // Gloo binds a socket for its peers. On one machine the loopback address that reaches the
      // store serves; across machines this host's own address (as torch.distributed chooses it).
      if (!env.gloo_socket_ifname.empty()) {
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(env.gloo_socket_ifname));
      } else if (is_loopback(env.master_addr)) {
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(env.master_addr));
      } else {
        options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      options->timeout = timeout;
      backend->collectives =
          c10::make_intrusive<c10d::ProcessGroupGloo>(backend->store, env.rank, env.world_size, options);
#endif
    } else {
#ifdef KILN_HAVE_NCCL
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout;
      backend->collectives =
          c10::make_intrusive<c10d::ProcessGroupNCCL>(backend->store, env.rank, env.world_size, options);
#endif
    }
  } catch (const std::exception& e) {
    throw Error("rank " + std::to_string(env.rank) + " could not set up its " +
                (device.is_cpu() ? "Gloo" : "NCCL") + " process group (store at " + where + "): " + e.what());
  }
  return std::unique_ptr<DataParallelGroup>(
      new DataParallelGroup(env.rank, env.world_size, device, std::move(backend)));
#else
  return nullptr;  // unreachable: has_collective_backend() was false above
#endif
}

#if defined(KILN_HAVE_GLOO) || defined(KILN_HAVE_NCCL)
namespace {

// Runs `collective` on `tensors` packed into flat buffers of about `bucket_bytes`, one dtype and
// device per buffer, then copies the results back. The packing depends only on the tensors' order,
// dtypes, devices and sizes, so ranks holding the same model issue the same sequence of collectives.
void for_each_bucket(const std::vector<torch::Tensor>& tensors, int64_t bucket_bytes,
                     torch::Device group_device, const std::function<void(torch::Tensor&)>& collective) {
  struct Bucket {
    torch::ScalarType dtype;
    torch::Device device;
    std::vector<torch::Tensor> members;
    int64_t bytes = 0;
  };
  auto flush = [&](Bucket& bucket) {
    if (bucket.members.empty()) return;
    if (bucket.members.size() == 1 && bucket.members[0].is_contiguous()) {
      collective(bucket.members[0]);  // a big tensor alone: no packing copy
    } else {
      std::vector<torch::Tensor> pieces;
      pieces.reserve(bucket.members.size());
      for (const auto& t : bucket.members) pieces.push_back(t.reshape({-1}));
      torch::Tensor flat = torch::cat(pieces);
      collective(flat);
      int64_t offset = 0;
      for (auto& t : bucket.members) {
        t.copy_(flat.narrow(0, offset, t.numel()).view(t.sizes()));
        offset += t.numel();
      }
    }
    bucket.members.clear();
    bucket.bytes = 0;
  };

  std::vector<Bucket> open;  // one per (dtype, device), in order of first appearance
  for (const auto& t : tensors) {
    TORCH_CHECK(t.defined(), "distributed collective: an undefined tensor");
    TORCH_CHECK(t.layout() == torch::kStrided, "distributed collective: only dense tensors are supported");
    TORCH_CHECK(t.device().type() == group_device.type(), "distributed collective: a tensor on ", t.device(),
                " in a group on ", group_device);
    if (t.numel() == 0) continue;
    auto it = std::find_if(open.begin(), open.end(), [&](const Bucket& b) {
      return b.dtype == t.scalar_type() && b.device == t.device();
    });
    if (it == open.end()) {
      open.push_back(Bucket{t.scalar_type(), t.device(), {}, 0});
      it = std::prev(open.end());
    }
    const int64_t bytes = t.numel() * static_cast<int64_t>(t.element_size());
    if (!it->members.empty() && it->bytes + bytes > bucket_bytes) flush(*it);
    it->members.push_back(t);
    it->bytes += bytes;
  }
  for (auto& bucket : open) flush(bucket);
}

}  // namespace
#endif

void DataParallelGroup::all_reduce_gradients(const std::vector<torch::Tensor>& parameters,
                                             int64_t bucket_bytes) {
  if (!backend_) return;
#if defined(KILN_HAVE_GLOO) || defined(KILN_HAVE_NCCL)
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> grads;
  grads.reserve(parameters.size());
  for (const auto& p : parameters) {
    TORCH_CHECK(p.defined(), "all_reduce_gradients: an undefined parameter");
    if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
    grads.push_back(p.grad());
  }
  for_each_bucket(grads, bucket_bytes, device_, [&](torch::Tensor& flat) {
    std::vector<torch::Tensor> one{flat};
    backend_->collectives->allreduce(one)->wait();
  });
#endif
}

void DataParallelGroup::all_reduce_sum(const torch::Tensor& tensor) {
  if (!backend_) return;
#if defined(KILN_HAVE_GLOO) || defined(KILN_HAVE_NCCL)
  torch::NoGradGuard no_grad;
  for_each_bucket({tensor}, 0, device_, [&](torch::Tensor& flat) {
    std::vector<torch::Tensor> one{flat};
    backend_->collectives->allreduce(one)->wait();
  });
#endif
}

void DataParallelGroup::broadcast_from_main(const std::vector<torch::Tensor>& tensors, int64_t bucket_bytes) {
  if (!backend_) return;
#if defined(KILN_HAVE_GLOO) || defined(KILN_HAVE_NCCL)
  torch::NoGradGuard no_grad;  // the tensors are often parameters: leaves that require grad
  for_each_bucket(tensors, bucket_bytes, device_, [&](torch::Tensor& flat) {
    std::vector<torch::Tensor> one{flat};
    c10d::BroadcastOptions options;
    options.rootRank = 0;
    backend_->collectives->broadcast(one, options)->wait();
  });
#endif
}

bool DataParallelGroup::any(bool flag) {
  if (!backend_) return flag;
  torch::Tensor count =
      torch::full({1}, flag ? 1 : 0, torch::TensorOptions().dtype(torch::kInt32).device(device_));
  all_reduce_sum(count);
  return count.item<int>() > 0;  // item() also waits for NCCL's stream
}

void DataParallelGroup::barrier() {
  if (!backend_) return;
#if defined(KILN_HAVE_GLOO) || defined(KILN_HAVE_NCCL)
  c10d::BarrierOptions options;
  // NCCL's barrier is an all-reduce on a GPU; name ours rather than let it guess from the rank.
  if (device_.is_cuda() && device_.has_index()) options.device_ids = {device_.index()};
  backend_->collectives->barrier(options)->wait();
#endif
}

}  // namespace kiln
