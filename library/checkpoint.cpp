// Checkpoint files of a TrainingState (save_checkpoint, load_checkpoint) and the distributed CheckpointManager:
// rank 0 writes, every rank loads onto its device and gets its random generators back.
#include "ddprun/checkpoint.h"

#include "checkpoint/atomic_file.h"
#include "checkpoint/checkpoint_folder.h"
#include "checkpoint/module_state.h"
#include "checkpoint/torch_file.h"
#include "comm/agreement.h"
#include "comm/communicator.h"
#include "library/optimizer_state.h"
#include "trainer/lr_scheduler.h"
#include "trainer/optimizer.h"
#include "trainer/rank_state.h"

#include <cstdio>
#include <filesystem>
#include <optional>
#include <stdexcept>

namespace ddprun {
namespace {

using checkpoint::Value;

constexpr int64_t kFormat = 1;  // the layout of the "ddprun" entry

Value state_object(const TrainingState& state, ResumePoint at, Value extra) {
  if (state.model == nullptr) throw std::invalid_argument("TrainingState: no model to save");
  Value object = Value::dict({{"model", checkpoint::module_state_dict(*state.model)}});
  if (state.lr_scheduler != nullptr) {
    object.set("optimizer", state.lr_scheduler->rate().state_dict());  // with the schedule's initial_lr
    object.set("lr_scheduler", state.lr_scheduler->schedule().state_dict());
  } else if (state.optimizer != nullptr) {
    object.set("optimizer", library::optimizer_state_dict(*state.optimizer, std::nullopt));
  }
  object.set("epoch", at.epoch - 1);
  extra.set("format_version", kFormat);
  extra.set("step_in_epoch", at.step);
  object.set("ddprun", extra);
  return object;
}

// Loads `saved` into `state`; returns where to continue.
ResumePoint load_object(const Value& saved, const TrainingState& state, const std::string& path) {
  const std::string where = "'" + path + "': ";
  try {
    if (!saved.is_mapping())
      throw std::runtime_error(std::string("holds a ") + saved.kind_name() + ", not a checkpoint");
    if (state.model == nullptr) throw std::invalid_argument("TrainingState: no model to load into");
    checkpoint::load_module_state_dict(*state.model, saved.at("model"));
    if (state.optimizer != nullptr || state.lr_scheduler != nullptr) {
      const Value& optimizer = saved.at("optimizer");
      if (state.lr_scheduler != nullptr) {
        state.lr_scheduler->rate().load_state_dict(optimizer);
        state.lr_scheduler->schedule().load_state_dict(saved.at("lr_scheduler"));
      } else {
        library::load_optimizer_state_dict(*state.optimizer, optimizer);
      }
    }
    ResumePoint at{saved.at("epoch").to_int_in(-1, trainer::kMaxEpochs - 1, "its 'epoch' (the last finished one)") + 1,
                   0};
    if (const Value* extra = saved.find("ddprun")) {
      if (extra->at("format_version").to_int_in(1, INT64_MAX, "its format_version") > kFormat)
        throw std::runtime_error("was written by a newer ddprun; update it");
      at.step = extra->at("step_in_epoch").to_int_in(0, int64_t{1} << 40, "its step_in_epoch");
    }
    return at;
  } catch (const checkpoint::CheckpointError&) {
    throw;
  } catch (const std::exception& e) {
    throw std::runtime_error(where + e.what());
  }
}

}  // namespace

void save_checkpoint(const std::string& path, const TrainingState& state, ResumePoint at) {
  checkpoint::save(state_object(state, at, Value::dict()), path);
}

ResumePoint load_checkpoint(const std::string& path, const TrainingState& state, c10::Device map_location) {
  return load_object(checkpoint::load(path, checkpoint::MapLocation(map_location)), state, path);
}

struct CheckpointManager::State {
  ProcessGroup& group;
  TrainingState training;
  CheckpointOptions options;
  checkpoint::CheckpointFolder folder;
};

CheckpointManager::CheckpointManager(ProcessGroup& group, TrainingState state, CheckpointOptions options)
    : state_(std::make_unique<State>(State{group, state, options, checkpoint::CheckpointFolder(options.directory)})) {}

CheckpointManager::~CheckpointManager() = default;

void CheckpointManager::save(ResumePoint at) {
  ProcessGroup& group = state_->group;
  comm::Communicator& comm = group.communicator();
  const std::vector<std::string> states =
      comm.allgather_bytes(trainer::encode(trainer::capture_rank_state(group.device(), 0, 0)));
  comm::run_on_all_ranks(comm, [&] {
    if (group.rank() != 0) return;
    std::error_code ec;
    std::filesystem::create_directories(state_->folder.path(), ec);
    if (ec)
      throw std::runtime_error("cannot create the checkpoint directory '" + state_->folder.path() +
                               "': " + ec.message());
    Value ranks = Value::list();
    for (const std::string& s : states) ranks.append(trainer::to_value(trainer::decode(s)));
    const Value object =
        state_object(state_->training, at, Value::dict({{"world_size", group.world_size()}, {"rank_states", ranks}}));
    std::vector<std::string> paths;
    const bool epoch_end = at.step == 0 && at.epoch > 0;
    if (epoch_end) paths.push_back(state_->folder.for_epoch(at.epoch - 1));
    paths.push_back(state_->folder.newest());
    checkpoint::save_as(object, paths);
    if (epoch_end) state_->folder.keep_last(state_->options.keep_last, "ddprun");
  });
}

ResumePoint CheckpointManager::resume(const std::string& path) {
  ProcessGroup& group = state_->group;
  ResumePoint at;
  std::string streams = " (the file holds no random states: the random streams start afresh)";
  comm::run_on_all_ranks(group.communicator(), [&] {
    const Value saved = checkpoint::load(path, checkpoint::MapLocation(group.device()));
    at = load_object(saved, state_->training, path);
    // Every rank's random generators as they were, when the world is the one that saved them.
    const Value* extra = saved.find("ddprun");
    const Value* ranks = extra ? extra->find("rank_states") : nullptr;
    if (ranks == nullptr) return;
    const int saved_world = static_cast<int>(ranks->items().size());
    if (saved_world != group.world_size()) {
      streams = " (written by " + std::to_string(saved_world) + " ranks: the random streams start afresh)";
      return;
    }
    try {
      trainer::restore_rng(trainer::from_value(ranks->items()[static_cast<size_t>(group.rank())]), group.device());
      streams.clear();
    } catch (const std::runtime_error& e) {  // saved on another kind of device: the weights still fit
      streams = std::string(" (") + e.what() + ": the random streams start afresh)";
    }
  });
  if (group.rank() == 0) {
    std::printf("ddprun: resumed from %s: continuing at epoch %lld, step %lld%s\n", path.c_str(),
                static_cast<long long>(at.epoch), static_cast<long long>(at.step), streams.c_str());
    std::fflush(stdout);
  }
  return at;
}

ResumePoint CheckpointManager::resume_auto() {
  ProcessGroup& group = state_->group;
  ResumePoint at;
  // A checkpoint write whose writer was killed left a partial temporary file: rank 0 removes it before choosing.
  if (group.rank() == 0)
    for (const checkpoint::StaleTemporary& stale : checkpoint::remove_stale_temporaries(state_->folder.path()))
      std::printf("ddprun: removed %s (%.1f MB), a checkpoint write whose writer is gone (killed mid-write)\n",
                  stale.path.c_str(), static_cast<double>(stale.bytes) / 1e6);
  const std::string chosen =
      checkpoint::load_newest(group.communicator(), state_->folder, "ddprun", "the checkpoint directory",
                              [&](const std::string& path) { at = resume(path); });
  if (chosen.empty() && group.rank() == 0) {
    std::printf("ddprun: no checkpoint in '%s' yet; starting afresh\n", state_->folder.path().c_str());
    std::fflush(stdout);
  }
  return at;
}

}  // namespace ddprun
