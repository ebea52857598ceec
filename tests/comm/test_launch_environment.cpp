// Which rank a process is, as its launcher's environment says (mpirun, srun, torchrun), the check that MPI sees the
// same world, and the GPU a rank takes.
#include "comm/communicator.h"
#include "comm/launch_environment.h"

#include <gtest/gtest.h>

#include <map>
#include <stdexcept>
#include <string>

namespace {

using ddprun::comm::LaunchEnvironment;

LaunchEnvironment read(const std::map<std::string, std::string>& vars) {
  return ddprun::comm::read_launch_environment([&](const char* name) -> const char* {
    const auto found = vars.find(name);
    return found == vars.end() ? nullptr : found->second.c_str();
  });
}

TEST(LaunchEnvironment, ReadsEachLauncher) {
  LaunchEnvironment e = read({{"OMPI_COMM_WORLD_RANK", "3"},
                              {"OMPI_COMM_WORLD_SIZE", "8"},
                              {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                              {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"},
                              {"SLURM_PROCID", "0"},  // the batch step's, inherited through mpirun
                              {"SLURM_NTASKS", "8"}});
  EXPECT_EQ(e.launcher, "mpirun");
  EXPECT_EQ(e.rank, 3);
  EXPECT_EQ(e.world_size, 8);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.local_size, 2);

  e = read({{"RANK", "1"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "1"}, {"LOCAL_WORLD_SIZE", "2"}});
  EXPECT_EQ(e.launcher, "torchrun");
  EXPECT_EQ(e.rank, 1);
  EXPECT_EQ(e.local_size, 2);

  e = read({{"SLURM_PROCID", "5"},
            {"SLURM_NTASKS", "6"},
            {"SLURM_LOCALID", "2"},
            {"SLURM_STEP_ID", "0"},
            {"SLURM_GPUS_PER_TASK", "1"},
            {"SLURM_RESTART_COUNT", "2"},
            {"DDPRUN_RESTART_COUNT", "1"}});
  EXPECT_EQ(e.launcher, "srun");
  EXPECT_EQ(e.rank, 5);
  EXPECT_EQ(e.world_size, 6);
  EXPECT_EQ(e.local_rank, 2);
  EXPECT_EQ(e.local_size, 3);  // srun does not say; at least local rank + 1
  EXPECT_TRUE(e.gpus_per_rank);
  EXPECT_EQ(e.slurm_requeues, 2);
  EXPECT_EQ(e.ddprun_restarts, 1);
}

TEST(LaunchEnvironment, ABatchScriptOrAHandStartIsNoLauncher) {
  // A Slurm batch script has SLURM_PROCID and SLURM_NTASKS but is no task of a step.
  EXPECT_EQ(read({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}}).launcher, "");
  const LaunchEnvironment e = read({});
  EXPECT_EQ(e.launcher, "");
  EXPECT_EQ(e.world_size, 1);
  // Values that make no sense are no launcher either.
  EXPECT_EQ(read({{"RANK", "4"}, {"WORLD_SIZE", "4"}}).launcher, "");
  EXPECT_EQ(read({{"RANK", "x"}, {"WORLD_SIZE", "4"}}).launcher, "");
}

TEST(LaunchEnvironment, RefusesAWorldOfOneWhereTheLauncherStartedMany) {
  EXPECT_NO_THROW(ddprun::comm::check_launch_matches(read({}), 0, 1));
  LaunchEnvironment torchrun = read({{"RANK", "1"}, {"WORLD_SIZE", "2"}});
  try {
    ddprun::comm::check_launch_matches(torchrun, 0, 1);
    ADD_FAILURE() << "accepted";
  } catch (const ddprun::comm::CommError& e) {
    EXPECT_STREQ(e.what(),
                 "torchrun started this process as rank 1 of 2, but MPI sees rank 0 of 1: every process would train on "
                 "its own; torchrun starts no MPI job; start it with ddprun or mpirun (the ranks' collectives run "
                 "over MPI)");
  }
  const LaunchEnvironment srun = read({{"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "2"}, {"SLURM_STEP_ID", "0"}});
  EXPECT_THROW(ddprun::comm::check_launch_matches(srun, 0, 1), ddprun::comm::CommError);
  EXPECT_NO_THROW(ddprun::comm::check_launch_matches(srun, 1, 2));
}

TEST(LaunchEnvironment, ChoosesEachRanksGpu) {
  const LaunchEnvironment shared = read({});
  EXPECT_EQ(ddprun::comm::choose_device_index(shared, 0, 2, 0), -1);  // no GPU: the CPU
  EXPECT_EQ(ddprun::comm::choose_device_index(shared, 1, 2, 2), 1);   // every rank sees the node's GPUs
  EXPECT_EQ(ddprun::comm::choose_device_index(shared, 1, 4, 8), 1);
  try {
    ddprun::comm::choose_device_index(shared, 1, 2, 1);
    ADD_FAILURE() << "two ranks on one GPU";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(),
                 "local rank 1 of 2 has no GPU of its own (1 visible on this node); start at most one rank per GPU");
  }
  // srun --gpus-per-task=1: every task sees its own GPU as device 0.
  const LaunchEnvironment bound = read({{"SLURM_PROCID", "3"},
                                        {"SLURM_NTASKS", "4"},
                                        {"SLURM_LOCALID", "1"},
                                        {"SLURM_STEP_ID", "0"},
                                        {"SLURM_GPUS_PER_TASK", "1"}});
  EXPECT_EQ(ddprun::comm::choose_device_index(bound, 1, 2, 1), 0);
}

}  // namespace
