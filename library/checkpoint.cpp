// TrainingState (the named entries of a checkpoint), save_checkpoint/load_checkpoint, and the distributed
// CheckpointManager: every collective call starts with a rendezvous (a call made on some ranks only is named within
// seconds), a save compares the ranks' weights, rank 0 writes through the engine's one training-checkpoint writer,
// and every rank loads through its one reader, onto its own device, with its random generators put back.
#include "ddprun/checkpoint.h"

#include "checkpoint/async_saver.h"
#include "checkpoint/atomic_file.h"
#include "checkpoint/checkpoint_folder.h"
#include "checkpoint/torch_file.h"
#include "comm/agreement.h"
#include "comm/communicator.h"
#include "ddprun/errors.h"
#include "engine/distributed_data_parallel.h"
#include "engine/rank_state.h"
#include "engine/training_checkpoint.h"
#include "library/access.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <set>
#include <sstream>
#include <variant>

namespace ddprun {

using checkpoint::Value;

// ---- TrainingState ------------------------------------------------------------------------------------------------

struct TrainingState::Impl {
  std::vector<engine::Entry> entries;
  std::set<std::string> keys;
  std::vector<std::pair<std::string, torch::nn::Module*>> modules;
  std::vector<LrScheduler*> schedulers;
  torch::optim::Optimizer* optimizer = nullptr;  // the "optimizer" entry's
  std::vector<std::pair<std::string, ArgValue>> args;
  std::optional<engine::SamplerState> sampler;
  std::vector<std::pair<std::string, std::variant<double*, int64_t*>>> rank_numbers;

  void add(engine::Entry entry, bool own_key) {
    static const std::set<std::string> kReserved{"model", "optimizer", "lr_scheduler", "epoch", "args", "ddprun"};
    if (own_key && kReserved.count(entry.key))
      throw UsageError("TrainingState: '" + entry.key +
                       "' is one of torchvision's keys (or ddprun's); give your entry another name, or use "
                       "TrainingState's constructor, optimizer() or lr_scheduler() without a name");
    if (entry.key.empty()) throw UsageError("TrainingState: an entry needs a name");
    if (!keys.insert(entry.key).second)
      throw UsageError("TrainingState: '" + entry.key + "' is named twice; every entry needs a name of its own");
    entries.push_back(std::move(entry));
  }
  void add_rank_number(const std::string& key, std::variant<double*, int64_t*> value) {
    if (key.empty() || key == "cpu_rng_state" || key == "device_rng_state")
      throw UsageError("TrainingState::rank_number: '" + key + "' is not a name of your own");
    for (const auto& [name, v] : rank_numbers)
      if (name == key) throw UsageError("TrainingState::rank_number: '" + key + "' is named twice");
    rank_numbers.emplace_back(key, value);
  }
  engine::Entry optimizer_entry(const std::string& key, torch::optim::Optimizer& optimizer) {
    // The schedule that drives this optimizer (if one is registered, now or later) keeps initial_lr.
    return engine::optimizer_entry(key, optimizer, [this, &optimizer]() -> engine::LearningRate* {
      for (LrScheduler* s : schedulers)
        if (&s->optimizer() == &optimizer) return &LibraryAccess::rate(*s);
      return nullptr;
    });
  }
};

TrainingState::TrainingState(torch::nn::Module& model) : impl_(std::make_shared<Impl>()) {
  impl_->add(engine::module_entry("model", model), false);
  impl_->modules.emplace_back("model", &model);
}

TrainingState& TrainingState::optimizer(torch::optim::Optimizer& optimizer) {
  impl_->add(impl_->optimizer_entry("optimizer", optimizer), false);
  impl_->optimizer = &optimizer;
  return *this;
}

TrainingState& TrainingState::lr_scheduler(LrScheduler& scheduler) {
  impl_->add(engine::schedule_entry("lr_scheduler", LibraryAccess::schedule(scheduler)), false);
  impl_->schedulers.push_back(&scheduler);
  return *this;
}

TrainingState& TrainingState::arg(const std::string& name, ArgValue value) {
  for (auto& [n, v] : impl_->args) {
    if (n == name) {
      v = std::move(value);
      return *this;
    }
  }
  if (impl_->args.empty()) {
    impl_->add(engine::args_entry([impl = impl_.get()] {
                 Value args = Value::dict();
                 for (const auto& [n, v] : impl->args)
                   std::visit([&args, &n = n](const auto& x) { args.set(n, Value(x)); }, v);
                 return args;
               }),
               false);
  }
  impl_->args.emplace_back(name, std::move(value));
  return *this;
}

TrainingState& TrainingState::module(const std::string& key, torch::nn::Module& module) {
  impl_->add(engine::module_entry(key, module), true);
  impl_->modules.emplace_back(key, &module);
  return *this;
}

TrainingState& TrainingState::optimizer(const std::string& key, torch::optim::Optimizer& optimizer) {
  impl_->add(impl_->optimizer_entry(key, optimizer), true);
  return *this;
}

TrainingState& TrainingState::lr_scheduler(const std::string& key, LrScheduler& scheduler) {
  impl_->add(engine::schedule_entry(key, LibraryAccess::schedule(scheduler)), true);
  impl_->schedulers.push_back(&scheduler);
  return *this;
}

TrainingState& TrainingState::tensor(const std::string& key, torch::Tensor& tensor) {
  impl_->add(engine::tensor_entry(key, tensor), true);
  return *this;
}

TrainingState& TrainingState::number(const std::string& key, double& value) {
  impl_->add(engine::number_entry(key, value), true);
  return *this;
}

TrainingState& TrainingState::number(const std::string& key, int64_t& value) {
  impl_->add(engine::number_entry(key, value), true);
  return *this;
}

TrainingState& TrainingState::text(const std::string& key, std::string& value) {
  impl_->add(engine::text_entry(key, value), true);
  return *this;
}

TrainingState& TrainingState::grad_scaler(GradScaler& scaler) {
  impl_->add({"scaler",
              [&scaler]() -> Value {
                if (!scaler.is_enabled()) return Value::dict();  // Python's disabled scaler: {}
                const GradScalerState s = scaler.state();
                Value saved = Value::dict();
                saved.set("scale", s.scale);
                saved.set("growth_factor", s.growth_factor);
                saved.set("backoff_factor", s.backoff_factor);
                saved.set("growth_interval", s.growth_interval);
                saved.set("_growth_tracker", s.growth_tracker);
                return saved;
              },
              [&scaler](const Value& saved) -> std::function<void()> {
                if (!saved.is_mapping())
                  throw std::runtime_error(std::string("its 'scaler' entry is a ") + saved.kind_name() +
                                           ", not GradScaler's state dict");
                // A disabled scaler's {} (torchvision's --amp on a machine without CUDA): the scaler starts afresh.
                if (saved.entries().empty() || !scaler.is_enabled()) return [] {};
                auto number = [&saved](const char* key) {
                  const Value* v = saved.find(key);
                  if (v == nullptr) throw std::runtime_error(std::string("its 'scaler' entry has no '") + key + "'");
                  return v->to_double_in(-1e300, 1e300, std::string("its 'scaler' entry's '") + key + "'");
                };
                auto integer = [&saved](const char* key) {
                  const Value* v = saved.find(key);
                  if (v == nullptr) throw std::runtime_error(std::string("its 'scaler' entry has no '") + key + "'");
                  return v->to_int_in(0, INT32_MAX, std::string("its 'scaler' entry's '") + key + "'");
                };
                const GradScalerState s{number("scale"), number("growth_factor"), number("backoff_factor"),
                                        integer("growth_interval"), integer("_growth_tracker")};
                try {
                  GradScaler(GradScalerOptions{}).load_state(s);  // checks every value, changes nothing
                } catch (const UsageError& e) {
                  throw std::runtime_error(std::string("its 'scaler' entry does not fit: ") + e.what());
                }
                return [&scaler, s] { scaler.load_state(s); };
              }},
             true);
  return *this;
}

TrainingState& TrainingState::sampler(const DistributedSampler& sampler, int64_t batch_size) {
  if (batch_size < 1) throw UsageError("TrainingState::sampler: the batch size must be at least 1");
  if (impl_->sampler) throw UsageError("TrainingState::sampler: a state records one sampler");
  impl_->sampler = engine::SamplerState{sampler.dataset_size(), sampler.seed(), sampler.shuffle(), batch_size};
  return *this;
}

TrainingState& TrainingState::rank_number(const std::string& key, double& value) {
  impl_->add_rank_number(key, &value);
  return *this;
}

TrainingState& TrainingState::rank_number(const std::string& key, int64_t& value) {
  impl_->add_rank_number(key, &value);
  return *this;
}

const std::vector<engine::Entry>& LibraryAccess::entries(const TrainingState& state) { return state.impl_->entries; }

const std::optional<engine::SamplerState>& LibraryAccess::sampler(const TrainingState& state) {
  return state.impl_->sampler;
}

std::vector<std::pair<std::string, Value>> LibraryAccess::rank_numbers(const TrainingState& state) {
  std::vector<std::pair<std::string, Value>> numbers;
  for (const auto& [name, v] : state.impl_->rank_numbers)
    std::visit([&numbers, &name = name](auto* p) { numbers.emplace_back(name, Value(*p)); }, v);
  return numbers;
}

void LibraryAccess::restore_rank_numbers(const TrainingState& state, const engine::RankState& saved) {
  for (const auto& [name, v] : state.impl_->rank_numbers) {
    for (const auto& [saved_name, value] : saved.numbers) {
      if (saved_name != name) continue;
      if (auto* d = std::get_if<double*>(&v)) **d = value.to_double();
      if (auto* i = std::get_if<int64_t*>(&v))
        **i = value.is_int() ? value.to_int() : static_cast<int64_t>(value.to_double());
    }
  }
}

torch::optim::Optimizer* LibraryAccess::optimizer(const TrainingState& state) { return state.impl_->optimizer; }

std::vector<std::pair<std::string, torch::nn::Module*>> LibraryAccess::modules(const TrainingState& state) {
  return state.impl_->modules;
}

void check_map_location(const std::string& mapping) {
  try {
    checkpoint::MapLocation::parse(mapping, c10::Device(c10::kCPU));
  } catch (const std::invalid_argument& e) {
    throw UsageError(e.what());
  }
}

// ---- one process ----------------------------------------------------------------------------------------------------

namespace {

// A ddprun::Error from whatever a load or a save threw: it keeps its exit code, others get `exit_code`.
[[noreturn]] void rethrow_as(int exit_code, const std::string& prefix, const std::exception& e) {
  if (const auto* error = dynamic_cast<const Error*>(&e)) throw Error(error->exit_code(), prefix + e.what());
  throw Error(exit_code, prefix + comm::error_message(e));
}

}  // namespace

void save_checkpoint(const std::string& path, const TrainingState& state, ResumePoint at) {
  if (at.epoch < 0 || at.step < 0) throw UsageError("save_checkpoint: the epoch and step must not be negative");
  try {
    const engine::RankState rank =
        engine::capture_rank_state(c10::Device(c10::kCPU), LibraryAccess::rank_numbers(state));
    checkpoint::save(engine::write_training_checkpoint(LibraryAccess::entries(state), {at.epoch, at.step}, 1,
                                                       LibraryAccess::sampler(state), {rank}),
                     path);
  } catch (const std::exception& e) {
    rethrow_as(kExitFailure, "", e);
  }
}

ResumePoint load_checkpoint(const std::string& path, const TrainingState& state, c10::Device map_location) {
  try {
    const Value saved = checkpoint::load(path, checkpoint::MapLocation(map_location));
    engine::Resume resume =
        engine::read_training_checkpoint(saved, LibraryAccess::entries(state), 1, 0, LibraryAccess::sampler(state));
    resume.apply();
    return {resume.at.epoch, resume.at.step, false};
  } catch (const checkpoint::CheckpointError& e) {
    throw SetUpError(e.what());
  } catch (const UsageError&) {
    throw;
  } catch (const std::exception& e) {
    throw SetUpError("load_checkpoint('" + path + "'): " + comm::error_message(e));
  }
}

// ---- CheckpointManager ----------------------------------------------------------------------------------------------

struct CheckpointManager::Impl {
  ProcessGroup& group;
  comm::Communicator& comm;
  TrainingState state;
  CheckpointOptions options;
  checkpoint::CheckpointFolder folder;
  checkpoint::MapLocation map_location;
  std::unique_ptr<checkpoint::AsyncSaver> async;  // rank 0, async_save
  std::atomic<bool> have_checkpoint{false};       // rank 0
  std::atomic<bool> last_save_failed{false};      // rank 0
  std::atomic<bool> saved_in_this_run{false};     // rank 0
  bool tried_to_save = false;                     // rank 0
  bool warned_unwrapped = false;
  std::string resumed_from;

  Impl(ProcessGroup& g, TrainingState s, CheckpointOptions o)
      : group(g),
        comm(LibraryAccess::communicator(g)),
        state(std::move(s)),
        options(std::move(o)),
        folder(options.directory) {}

  bool rank0() const { return comm.rank() == 0; }
  void say(const char* kind, const std::string& text) const {
    std::fprintf(kind ? stderr : stdout, "%s: %s%s\n", group.program().c_str(), kind ? kind : "", text.c_str());
    std::fflush(kind ? stderr : stdout);
  }

  // Every rank enters `call` together, or every rank that did learns within seconds who did not (see
  // Communicator::rendezvous); ranks in different calls stop with both named.
  void rendezvous(const std::string& call) {
    const std::vector<std::string> calls = comm.rendezvous(call);
    for (size_t r = 0; r < calls.size(); ++r) {
      if (calls[r] != calls[0])
        throw UsageError("rank " + std::to_string(r) + " called " + calls[r] + " where rank 0 called " + calls[0] +
                             "; every rank must make the same checkpoint calls at the same points",
                         static_cast<int>(r));
    }
  }

  // Rank 0: whether the folder holds a checkpoint file (checkpoint.pth or model_<epoch>.pth).
  bool checkpoint_on_disk() const {
    for (const std::string& path : folder.newest_first()) {
      std::error_code ec;
      if (std::filesystem::is_regular_file(path, ec)) return true;
    }
    return false;
  }

  // A checksum of every parameter of every module (integer sums of their bits: exact, cheap, on the device).
  std::string replica_checksums() const {
    std::string text;
    for (const auto& [key, module] : LibraryAccess::modules(state)) {
      std::vector<std::string> names;
      std::vector<at::Tensor> sums;
      for (const auto& item : module->named_parameters()) {
        at::Tensor t = item.value().detach().contiguous().view({-1});
        const size_t size = t.element_size();
        const at::ScalarType as = size == 8 ? at::kLong : size == 4 ? at::kInt : size == 2 ? at::kShort : at::kByte;
        names.push_back(key + "." + item.key());
        sums.push_back(t.numel() == 0 ? at::zeros({}, t.options().dtype(at::kLong)) : t.view(as).sum(at::kLong));
      }
      if (sums.empty()) continue;
      const at::Tensor all = at::stack(sums).cpu();
      const int64_t* s = all.data_ptr<int64_t>();
      for (size_t i = 0; i < names.size(); ++i) text += names[i] + " " + std::to_string(s[i]) + "\n";
    }
    return text;
  }

  // Ranks whose weights differ at a save trained outside DistributedDataParallel: the checkpoint (rank 0's) would
  // not be what the other ranks trained, and all-reduced metrics would average different models.
  void check_replicas() {
    const std::vector<std::string> all = comm.allgather_bytes(replica_checksums());
    for (size_t r = 1; r < all.size(); ++r) {
      if (all[r] == all[0]) continue;
      std::string name = "a parameter";
      std::istringstream a(all[r]), b(all[0]);
      for (std::string la, lb; std::getline(a, la) && std::getline(b, lb);) {
        if (la != lb) {
          name = "'" + la.substr(0, la.rfind(' ')) + "'";
          break;
        }
      }
      throw UsageError(
          "CheckpointManager::save(): the ranks' weights differ: rank " + std::to_string(r) + "'s " + name +
              " is not rank 0's, so the checkpoint (rank 0's) is not what the ranks trained; train the model "
              "through DistributedDataParallel (wrap the very module the optimizer updates, and call it through "
              "the wrapper), or set CheckpointOptions::check_replicas to false if the ranks differ on purpose",
          static_cast<int>(r));
    }
  }

  // Every rank reads the checkpoints rank 0 writes, so every rank must see the same directory: rank 0 leaves a file
  // of a name no one has looked up before (so no cached "not there" answers for it), every rank looks for it.
  void check_shared_directory() {
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    const std::string marker = ".ddprun-shared-check." + std::string(host) + "." + std::to_string(::getpid());
    const std::string path = options.directory + "/" + marker;
    comm::run_on_all_ranks(comm, [&] {
      if (!rank0()) return;
      const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
      if (fd < 0)
        throw SetUpError("cannot write " + path + " (" + std::strerror(errno) + ") in " + options.directory_name);
      ::close(fd);
    });
    const std::vector<std::string> names = comm.allgather_bytes(rank0() ? marker : "");
    struct stat info {};
    const bool seen = ::stat((options.directory + "/" + names[0]).c_str(), &info) == 0;
    const std::vector<std::string> views = comm.allgather_bytes(std::string(seen ? "1" : "0") + host);
    if (rank0()) ::unlink(path.c_str());
    std::string blind, hosts;
    std::set<std::string> hosts_named;
    int first = -1;
    for (size_t r = 0; r < views.size(); ++r) {
      if (views[r][0] == '1') continue;
      if (first < 0) first = static_cast<int>(r);
      blind += (blind.empty() ? "" : ", ") + std::to_string(r);
      const std::string h = views[r].substr(1);
      if (hosts_named.insert(h).second) hosts += (hosts.empty() ? "" : ", ") + h;
    }
    if (first >= 0)
      throw SetUpError(
          options.directory_name + " '" + options.directory + "' is not the folder rank 0 writes to, on rank(s) " +
              blind + " (" + hosts + "): they do not see the file rank 0 just made there, and would " +
              "resume from files of their own; give a folder every node shares (a shared file system), or " +
              "let rank 0 read the checkpoints for all (" + options.read_on_rank0_name + ")",
          first);
  }

  void warn_unwrapped() {
    if (warned_unwrapped || comm.size() == 1 || !rank0()) return;
    for (const auto& [key, module] : LibraryAccess::modules(state)) {
      bool trainable = false;
      for (const at::Tensor& p : module->parameters()) trainable = trainable || p.requires_grad();
      if (!trainable || engine::DistributedDataParallel::wraps(*module)) continue;
      say("warning: ", "CheckpointManager::save(): '" + key +
                           "' is not wrapped in DistributedDataParallel at world "
                           "size " +
                           std::to_string(comm.size()) +
                           ": unless the program averages its gradients itself, the ranks drift apart (each save "
                           "compares their weights)");
      warned_unwrapped = true;
    }
  }

  // A model whose weights hold NaN or inf is not saved over the last good checkpoint (a finite loss does not
  // guarantee finite weights after the update).
  void refuse_non_finite_weights(ResumePoint at) const {
    for (const auto& [key, module] : LibraryAccess::modules(state)) {
      for (const auto& item : module->named_parameters()) {
        const at::Tensor& p = item.value();
        if (p.is_floating_point() && !at::isfinite(p.detach()).all().item<bool>())
          throw DivergedError("CheckpointManager::save() at epoch " + std::to_string(at.epoch) + " step " +
                              std::to_string(at.step) + ": '" + key + "." + item.key() +
                              "' holds NaN or inf values: training has diverged; the last checkpoint is kept");
      }
    }
  }

  // The files of the save in flight (or last made), and when it began: a save that failed part way keeps the files
  // it committed (save_as commits model_<epoch>.pth before checkpoint.pth).
  std::vector<std::string> saving_paths;
  std::filesystem::file_time_type saving_since;
  bool saved_some_file() const {
    for (const std::string& path : saving_paths) {
      std::error_code ec;
      if (std::filesystem::is_regular_file(path, ec) && std::filesystem::last_write_time(path, ec) >= saving_since &&
          !ec)
        return true;
    }
    return false;
  }

  void report_save_error(const std::exception& e) {
    last_save_failed = true;
    if (saved_some_file()) saved_in_this_run = true;
    have_checkpoint = have_checkpoint || checkpoint_on_disk();  // save_as keeps the files it committed
    const std::string previous = have_checkpoint ? "the previous checkpoint is intact" : "there is no checkpoint yet";
    if (options.on_save_error == OnSaveError::Warn) {
      say("warning: ",
          std::string(e.what()) + "; training continues without this checkpoint (OnSaveError::Warn); " + previous);
      return;
    }
    throw Error(kExitFailure, std::string(e.what()) + "; " + previous +
                                  ": fix the disk or folder and resume from it (OnSaveError::Warn trains on without "
                                  "saving)");
  }

  void finish_async_save() {
    try {
      async->wait();
    } catch (const checkpoint::CheckpointError& e) {
      report_save_error(e);
    }
  }

  // Every rank: the file's dict, read on every rank or by rank 0 and broadcast.
  Value read_file(const std::string& path) {
    if (!options.read_on_rank0) return checkpoint::load(path, map_location);
    at::Tensor size = at::zeros({1}, at::kLong);
    at::Tensor data;
    comm::run_on_all_ranks(comm, [&] {
      if (!rank0()) return;
      data = checkpoint::read_checkpoint_bytes(path);  // checked as a load checks a file before reading it
      size[0] = data.numel();
    });
    comm.broadcast(size, 0)->wait();
    if (!rank0()) data = at::empty({size.item<int64_t>()}, at::kByte);
    constexpr int64_t kPiece = int64_t{256} << 20;  // within MPI's counts
    for (int64_t begin = 0; begin < data.numel(); begin += kPiece) {
      at::Tensor piece = data.narrow(0, begin, std::min(kPiece, data.numel() - begin));
      comm.broadcast(piece, 0)->wait();
    }
    return checkpoint::load_from_memory(data.data_ptr(), static_cast<size_t>(data.numel()), path, map_location);
  }

  // Every rank loads `path` (throws CollectiveFailure, exit code 3, on every rank when any cannot); returns where to
  // continue and says so on rank 0.
  ResumePoint load(const std::string& path) {
    const std::string where = options.resume_name + " '" + path + "': ";
    engine::Resume resume;
    comm::run_on_all_ranks(comm, [&] {
      try {
        const Value saved = read_file(path);
        resume = engine::read_training_checkpoint(saved, LibraryAccess::entries(state), comm.size(), comm.rank(),
                                                  LibraryAccess::sampler(state));
      } catch (const checkpoint::CheckpointError& e) {
        throw SetUpError(e.what());
      } catch (const comm::CollectiveFailure& e) {  // rank 0 could not read the file it broadcasts: it says why
        throw SetUpError(e.what());
      } catch (const std::exception& e) {
        throw SetUpError(where + comm::error_message(e));
      }
    });
    resume.apply();
    std::string streams = resume.note.empty() ? "" : " (" + resume.note + ")";
    bool exact = false;
    if (resume.rank_state) {
      try {
        engine::restore_rng(*resume.rank_state, group.device());
        LibraryAccess::restore_rank_numbers(state, *resume.rank_state);
        exact = true;
      } catch (const std::runtime_error& e) {  // saved on another kind of device: the weights still fit
        streams = std::string(" (") + e.what() + ": the random streams start afresh)";
      }
    } else if (resume.note.empty()) {
      streams = " (the file holds no random states: the random streams start afresh)";
    }
    resumed_from = path;
    if (rank0()) {
      char lr[48] = "";
      if (torch::optim::Optimizer* o = LibraryAccess::optimizer(state); o && !o->param_groups().empty())
        std::snprintf(lr, sizeof lr, " with lr %.6g", o->param_groups().front().options().get_lr());
      say(nullptr, "resumed from " + path + ": continuing at epoch " + std::to_string(resume.at.epoch) +
                       (resume.at.step > 0 ? ", step " + std::to_string(resume.at.step) : "") + lr +
                       (options.map_location.empty() ? "" : " (map_location: " + map_location.to_string() + ")") +
                       streams);
    }
    return {resume.at.epoch, resume.at.step, exact};
  }
};

CheckpointManager::CheckpointManager(ProcessGroup& group, TrainingState state, CheckpointOptions options)
    : impl_(std::make_unique<Impl>(group, std::move(state), std::move(options))) {
  Impl& m = *impl_;
  if (m.options.keep_last < 0) throw UsageError("CheckpointOptions::keep_last must not be negative (0 keeps all)");
  if (m.options.directory.empty()) throw UsageError("CheckpointOptions::directory is empty");
  try {
    m.map_location = m.options.map_location.empty()
                         ? checkpoint::MapLocation(group.device())
                         : checkpoint::MapLocation::parse(m.options.map_location, group.device());
  } catch (const std::invalid_argument& e) {
    throw UsageError(std::string("CheckpointOptions::map_location: ") + e.what());
  }
  m.rendezvous("CheckpointManager::CheckpointManager()");
  // The directory is made and tried now, not after an epoch of training (when the failure would also look worth a
  // restart); partial files of writes cut short are removed.
  comm::run_on_all_ranks(m.comm, [&] {
    if (!m.rank0()) return;
    std::error_code ec;
    std::filesystem::create_directories(m.options.directory, ec);
    if (ec)
      throw SetUpError("cannot create " + m.options.directory_name + " '" + m.options.directory + "': " + ec.message());
    const std::string probe =
        checkpoint::AtomicFile::temporary_path(m.options.directory + "/" + checkpoint::CheckpointFolder::kWriteProbe);
    const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
      throw SetUpError(m.options.directory_name + " '" + m.options.directory + "' is not writable (" +
                       std::strerror(errno) + "); checkpoints go there: give a folder this user can write");
    ::close(fd);
    ::unlink(probe.c_str());
    for (const checkpoint::StaleTemporary& stale :
         checkpoint::remove_stale_temporaries(m.options.directory, checkpoint::CheckpointFolder::is_checkpoint_name)) {
      char size[32];
      std::snprintf(size, sizeof size, "%.1f MB", static_cast<double>(stale.bytes) / 1e6);
      m.say(nullptr, "removed " + stale.path + " (" + size +
                         "), a checkpoint write whose writer is gone (killed "
                         "mid-write)");
    }
    m.have_checkpoint = m.checkpoint_on_disk();
  });
  if (!m.options.read_on_rank0 && m.comm.size() > 1) m.check_shared_directory();
  if (m.rank0() && m.options.async_save) m.async = std::make_unique<checkpoint::AsyncSaver>();
}

CheckpointManager::~CheckpointManager() {
  if (!impl_->async) return;
  try {
    impl_->async->wait();
  } catch (const std::exception& e) {
    impl_->say("warning: ", std::string("the last background save failed: ") + e.what());
  }
}

ResumePoint CheckpointManager::resume(const std::string& path) {
  impl_->rendezvous("CheckpointManager::resume()");
  return impl_->load(path);
}

ResumePoint CheckpointManager::resume_auto() {
  Impl& m = *impl_;
  m.rendezvous("CheckpointManager::resume_auto()");
  ResumePoint at;
  const std::string chosen =
      checkpoint::load_newest(m.comm, m.folder, m.group.program(), m.options.directory_name, m.options.resume_auto_name,
                              [&](const std::string& path) { at = m.load(path); });
  if (chosen.empty() && m.rank0())
    m.say(nullptr, m.options.resume_auto_name + ": no checkpoint in '" + m.folder.path() + "' yet; starting afresh");
  return at;
}

void CheckpointManager::save(ResumePoint at) {
  Impl& m = *impl_;
  if (at.epoch < 0 || at.step < 0)
    throw UsageError("CheckpointManager::save(): the epoch and step must not be negative");
  m.rendezvous("CheckpointManager::save() at epoch " + std::to_string(at.epoch) + " step " + std::to_string(at.step));
  if (m.options.check_replicas && m.comm.size() > 1) m.check_replicas();
  m.warn_unwrapped();
  const std::vector<std::string> states = m.comm.allgather_bytes(
      engine::encode(engine::capture_rank_state(m.group.device(), LibraryAccess::rank_numbers(m.state))));
  comm::run_on_all_ranks(m.comm, [&] {
    if (!m.rank0()) return;
    std::vector<engine::RankState> ranks;
    for (const std::string& s : states) ranks.push_back(engine::decode(s));
    const Value object = engine::write_training_checkpoint(LibraryAccess::entries(m.state), {at.epoch, at.step},
                                                           m.comm.size(), LibraryAccess::sampler(m.state), ranks);
    std::vector<std::string> paths;
    const bool epoch_end = at.step == 0 && at.epoch > 0;
    if (epoch_end) paths.push_back(m.folder.for_epoch(at.epoch - 1));
    // Its own file, not a link to model_<epoch>.pth: a later torch.save over checkpoint.pth (as torchvision's
    // train.py does in the same folder) must not rewrite the per-epoch file.
    paths.push_back(m.folder.newest());
    m.refuse_non_finite_weights(at);
    m.tried_to_save = true;
    if (m.async) m.finish_async_save();  // the previous write: it must land before the next one starts
    m.saving_paths = paths;
    m.saving_since = std::filesystem::file_time_type::clock::now();
    auto after_saved = [&m, epoch_end] {  // on the saver's thread with async_save
      m.have_checkpoint = true;
      m.saved_in_this_run = true;
      m.last_save_failed = false;
      if (epoch_end) m.folder.keep_last(m.options.keep_last, m.group.program());
    };
    if (m.async) {
      m.async->save(object, paths, after_saved);
      return;
    }
    try {
      checkpoint::save_as(object, paths);
      after_saved();
    } catch (const checkpoint::CheckpointError& e) {
      m.report_save_error(e);
    }
  });
}

void CheckpointManager::wait() {
  Impl& m = *impl_;
  m.rendezvous("CheckpointManager::wait()");
  comm::run_on_all_ranks(m.comm, [&] {
    if (!m.rank0()) return;
    if (m.async) m.finish_async_save();
    // OnSaveError::Warn: a run that tried to save and never could did not succeed, whatever older files say.
    if (m.options.on_save_error == OnSaveError::Warn && m.tried_to_save && !m.saved_in_this_run)
      throw Error(kExitFailure, std::string("no checkpoint could be written in this run (see the warnings above): ") +
                                    (m.have_checkpoint ? "only an older one is on disk" : "there is none on disk") +
                                    "; fix the disk or folder '" + m.options.directory + "'");
  });
}

const std::string& CheckpointManager::resumed_from() const { return impl_->resumed_from; }
bool CheckpointManager::has_checkpoint() const { return impl_->have_checkpoint; }
bool CheckpointManager::last_save_failed() const { return impl_->last_save_failed; }

}  // namespace ddprun
