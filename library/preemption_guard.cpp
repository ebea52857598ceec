// ddprun::PreemptionGuard: the trainer's signal recorder and one all-reduce (max) of the signal per step boundary.
#include "ddprun/preemption_guard.h"

#include "comm/ready_report.h"
#include "trainer/preemption.h"

#include <ATen/ops/zeros.h>

namespace ddprun {

PreemptionGuard::PreemptionGuard(ProcessGroup& group, const std::vector<int>& signals) : group_(group) {
  trainer::watch_preemption_signals(signals);
  // Once every rank catches them, ddprun stops holding the preemption signals back.
  group_.barrier();
  if (group_.rank() == 0) comm::report_ranks_ready();
}

bool PreemptionGuard::should_stop() {
  at::Tensor flag = at::zeros({1}, at::kInt);
  flag.data_ptr<int32_t>()[0] = trainer::preemption_signal();
  group_.all_reduce(flag, ReduceOp::Max);
  signal_ = flag.data_ptr<int32_t>()[0];
  return signal_ != 0;
}

}  // namespace ddprun
