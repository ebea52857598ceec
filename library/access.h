// Inside the library only: what the public classes hold behind their Impl (the communicator, the schedule and its
// rate, a TrainingState's entries), reached through LibraryAccess, the one friend they all name.
#pragma once

#include "comm/communicator.h"
#include "ddprun/checkpoint.h"
#include "ddprun/lr_scheduler.h"
#include "ddprun/process_group.h"
#include "engine/learning_rate.h"
#include "engine/lr_schedule.h"
#include "engine/training_checkpoint.h"

#include <optional>
#include <vector>

namespace ddprun {

struct LibraryAccess {
  static comm::Communicator& communicator(ProcessGroup& group);
  static engine::LrSchedule& schedule(LrScheduler& scheduler);
  static engine::LearningRate& rate(LrScheduler& scheduler);
  static const std::vector<engine::Entry>& entries(const TrainingState& state);
  static const std::optional<engine::SamplerState>& sampler(const TrainingState& state);
  // The rank's numbers now, as RankState holds them.
  static std::vector<std::pair<std::string, checkpoint::Value>> rank_numbers(const TrainingState& state);
  // Puts a RankState's numbers back into the registered variables (those it has).
  static void restore_rank_numbers(const TrainingState& state, const engine::RankState& saved);
  // The modules of the state (key, module), for the replica check and the DDP warning.
  static std::vector<std::pair<std::string, torch::nn::Module*>> modules(const TrainingState& state);
  static torch::optim::Optimizer* optimizer(const TrainingState& state);  // the "optimizer" entry's, or nullptr
};

}  // namespace ddprun
