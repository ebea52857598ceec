// ddprun's library for your own LibTorch training program, all of it: the process group (ranks, devices,
// collectives), DistributedDataParallel, the distributed sampler (a torch::data sampler), learning-rate schedules with
// Python's state, checkpoints in the torch.save format and their manager, the preemption guard, the errors the
// library throws and run_main, which turns them into ddprun's exit codes. Link ddprun::ddprun (find_package(ddprun))
// and start the program with ddprun.
#pragma once

#include "ddprun/checkpoint.h"
#include "ddprun/distributed_data_parallel.h"
#include "ddprun/distributed_sampler.h"
#include "ddprun/errors.h"
#include "ddprun/launch_contract.h"
#include "ddprun/lr_scheduler.h"
#include "ddprun/mixed_precision.h"
#include "ddprun/model_ema.h"
#include "ddprun/preemption_guard.h"
#include "ddprun/process_group.h"
#include "ddprun/run.h"
#include "ddprun/sync_batch_norm.h"
