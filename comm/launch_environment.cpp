// Reading the launcher's variables, checking them against MPI, and the rank-to-GPU rule.
#include "comm/launch_environment.h"

#include "comm/communicator.h"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <stdexcept>

namespace ddprun::comm {
namespace {

// A whole number >= `least`, or -1.
int number(const char* text, int least) {
  if (text == nullptr || *text == '\0') return -1;
  char* end = nullptr;
  errno = 0;
  const long value = std::strtol(text, &end, 10);
  if (errno != 0 || *end != '\0' || value < least || value > INT_MAX) return -1;
  return static_cast<int>(value);
}

}  // namespace

LaunchEnvironment read_launch_environment(const std::function<const char*(const char*)>& get) {
  struct Names {
    const char* launcher;
    const char *rank, *size, *local_rank, *local_size;
  };
  // mpirun first: under Slurm, mpirun's ranks also inherit the batch step's SLURM_* variables.
  static constexpr Names kLaunchers[] = {
      {"mpirun", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
       "OMPI_COMM_WORLD_LOCAL_SIZE"},
      {"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"},
      {"srun", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", nullptr},
  };
  LaunchEnvironment launch;
  launch.ddprun_restarts = std::max(0, number(get("DDPRUN_RESTART_COUNT"), 0));
  launch.slurm_requeues = std::max(0, number(get("SLURM_RESTART_COUNT"), 0));
  for (const Names& names : kLaunchers) {
    const int rank = number(get(names.rank), 0), size = number(get(names.size), 1);
    if (rank < 0 || size < 0 || rank >= size) continue;
    // srun names only the rank's step: SLURM_STEP_ID is what tells a task from the batch script around ddprun.
    if (std::string(names.launcher) == "srun" && get("SLURM_STEP_ID") == nullptr) continue;
    launch.launcher = names.launcher;
    launch.rank = rank;
    launch.world_size = size;
    const int local_rank = number(get(names.local_rank), 0);
    const int local_size = names.local_size ? number(get(names.local_size), 1) : -1;
    launch.local_rank = local_rank >= 0 ? local_rank : 0;
    launch.local_size = local_size > launch.local_rank ? local_size : launch.local_rank + 1;
    launch.gpus_per_rank = launch.launcher == "srun" && number(get("SLURM_GPUS_PER_TASK"), 1) > 0;
    break;
  }
  return launch;
}

LaunchEnvironment read_launch_environment() {
  return read_launch_environment([](const char* name) { return std::getenv(name); });
}

void check_launch_matches(const LaunchEnvironment& launch, int mpi_rank, int mpi_size) {
  if (launch.launcher.empty() || (launch.world_size == mpi_size && launch.rank == mpi_rank)) return;
  std::string hint = "start it with ddprun or mpirun";
  if (launch.launcher == "srun") hint = "start it with srun --mpi=pmix (or ddprun --launcher srun), or with ddprun";
  if (launch.launcher == "torchrun")
    hint = "torchrun starts no MPI job; start it with ddprun or mpirun (the ranks' collectives run over MPI)";
  throw CommError(launch.launcher + " started this process as rank " + std::to_string(launch.rank) + " of " +
                  std::to_string(launch.world_size) + ", but MPI sees rank " + std::to_string(mpi_rank) + " of " +
                  std::to_string(mpi_size) + ": every process would train on its own; " + hint);
}

int choose_device_index(const LaunchEnvironment& launch, int local_rank, int local_size, int visible) {
  if (visible <= 0) return -1;
  if (launch.gpus_per_rank) return 0;
  if (local_rank < visible) return local_rank;
  throw std::runtime_error("local rank " + std::to_string(local_rank) + " of " + std::to_string(local_size) +
                           " has no GPU of its own (" + std::to_string(visible) +
                           " visible on this node); start at most one rank per GPU");
}

}  // namespace ddprun::comm
