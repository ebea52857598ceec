// ddprun::PreemptionGuard: the engine's signal recorder, and the ranks' agreement at each step boundary (one
// all-reduce of [the signal this rank got, 1 + this rank when its loss was not finite]).
#include "ddprun/preemption_guard.h"

#include "comm/ready_report.h"
#include "ddprun/errors.h"
#include "engine/preemption.h"
#include "library/access.h"

#include <ATen/ops/zeros.h>

#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <string>

namespace ddprun {

void catch_preemption_signals(const std::vector<int>& signals) {
  for (const int s : signals)
    if (s == SIGKILL || s == SIGSTOP)
      throw std::invalid_argument(std::string(s == SIGKILL ? "SIGKILL" : "SIGSTOP") +
                                  " cannot be caught; preempt with SIGUSR1 or SIGUSR2");
  engine::watch_preemption_signals(signals);
}

std::vector<int> parse_signal_list(const std::string& list) { return engine::parse_signal_list(list); }

std::string signal_name(int signal) { return engine::signal_name(signal); }

PreemptionGuard::PreemptionGuard(ProcessGroup& group, GuardOptions options)
    : group_(group), options_(std::move(options)) {
  if (options_.max_skipped_in_a_row < 1) throw UsageError("GuardOptions::max_skipped_in_a_row must be at least 1");
  catch_preemption_signals(options_.signals);
  // Once every rank catches them, ddprun stops holding the preemption signals back.
  group_.barrier();
  if (group_.rank() == 0) comm::report_ranks_ready();
}

bool PreemptionGuard::should_stop() {
  at::Tensor flag = at::zeros({1}, at::kInt);
  flag.data_ptr<int32_t>()[0] = engine::preemption_signal();
  group_.all_reduce(flag, ReduceOp::Max);
  signal_ = flag.data_ptr<int32_t>()[0];
  return signal_ != 0;
}

bool PreemptionGuard::check_step(double loss, int64_t epoch, int64_t step) {
  at::Tensor flags = at::zeros({2}, at::kInt);
  int32_t* f = flags.data_ptr<int32_t>();
  f[0] = engine::preemption_signal();
  f[1] = std::isfinite(loss) ? 0 : group_.rank() + 1;
  group_.all_reduce(flags, ReduceOp::Max);
  signal_ = f[0];
  const int rank = f[1] - 1;
  if (rank < 0) {
    skipped_in_a_row_ = 0;
    return true;
  }
  const std::string where = "the loss was NaN or inf on rank " + std::to_string(rank) + " at epoch " +
                            std::to_string(epoch) + " step " + std::to_string(step);
  if (options_.nan_policy == NanPolicy::Stop)
    throw DivergedError(where + ": every rank stopped before that step's update", rank);
  if (++skipped_in_a_row_ >= options_.max_skipped_in_a_row)
    throw DivergedError(where + ", the " + std::to_string(skipped_in_a_row_) +
                            "th step in a row: training has diverged; every rank stopped",
                        rank);
  if (group_.rank() == 0) {
    std::fprintf(stderr, "%s: warning: %s; every rank skipped that step's update (NanPolicy::SkipStep)\n",
                 group_.program().c_str(), where.c_str());
    std::fflush(stderr);
  }
  return false;
}

}  // namespace ddprun
