// Who started this process and which rank it is, as the launcher's environment says: Open MPI's mpirun
// (OMPI_COMM_WORLD_RANK/_SIZE/_LOCAL_RANK/_LOCAL_SIZE), Slurm's srun (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID),
// torchrun (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE); and how often the job was started again
// (DDPRUN_RESTART_COUNT, SLURM_RESTART_COUNT). The one place ranks read these variables: for the
// start-up line and errors before MPI runs, for catching a launch that gave every process a world of its own, and
// for the device a rank takes.
#pragma once

#include <functional>
#include <string>

namespace ddprun::comm {

struct LaunchEnvironment {
  std::string launcher;  // "mpirun", "srun", "torchrun", or "" (started by hand: one process)
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_size = 1;
  // The launcher gave each rank GPUs of its own (srun with --gpus-per-task: SLURM_GPUS_PER_TASK), so a rank's first
  // visible GPU is its own whatever its local rank.
  bool gpus_per_rank = false;
  int ddprun_restarts = 0;  // DDPRUN_RESTART_COUNT: how often ddprun has started this job again after a failure
  int slurm_requeues = 0;   // SLURM_RESTART_COUNT: how often Slurm has requeued the job
};

// From this process's environment. Unreadable values count as absent.
LaunchEnvironment read_launch_environment();
// From `get` (name -> value or nullptr), for tests.
LaunchEnvironment read_launch_environment(const std::function<const char*(const char*)>& get);

// Throws CommError when MPI's world is not the one the launcher started: torchrun, or srun without --mpi=pmix, start
// processes that each see an MPI world of one and would train alone.
void check_launch_matches(const LaunchEnvironment& launch, int mpi_rank, int mpi_size);

// The CUDA device index of a rank that sees `visible` GPUs: -1 when it sees none; 0 when the launcher gave each rank
// GPUs of its own (launch.gpus_per_rank); else its local rank (every rank sees the node's GPUs). Throws
// std::runtime_error when its local rank has no GPU of its own.
int choose_device_index(const LaunchEnvironment& launch, int local_rank, int local_size, int visible);

}  // namespace ddprun::comm
