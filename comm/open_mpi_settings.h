// The Open MPI settings of ddprun's MPI communicator: those made before MPI starts (the progress loop yields;
// coll/tuned may take a forced choice per communicator), and the all-reduce algorithm forced through the MPI tool
// interface (MPI_T) on one communicator of ours while it is created, so that every other communicator keeps Open MPI's
// own decision. Other MPIs ignore all of it.
#pragma once

#include <mpi.h>

#include <string>

namespace ddprun::comm {

// coll/tuned's number for Rabenseifner's all-reduce (reduce-scatter by recursive halving with distance doubling,
// then an all-gather): it sums every element in a balanced tree over the ranks in rank order, whatever the nodes,
// and with a node's ranks numbered together its first steps stay inside the node.
constexpr int kOpenMpiRabenseifner = 6;

// Before MPI_Init, in the environment, each unless the user has set it:
// - OMPI_MCA_mpi_yield_when_idle=1: Open MPI's progress loop spins while a collective waits for a peer; ours waits on
//   the communication thread while the rank's compute threads want the same cores, so let it yield (what Open MPI
//   does by itself when it sees more ranks than cores). On simulated nodes sharing the machine's cores this is what
//   takes a small all-reduce between nodes from ~9 ms to ~0.2 ms (docs/performance.md, "Across nodes").
// - OMPI_MCA_coll_tuned_use_dynamic_rules=1: lets coll/tuned take a forced choice per communicator (it can only be
//   set before MPI starts). Without a forced choice or a rules file coll/tuned decides as by default.
// A program that starts MPI itself calls this first to get the same (tests/mpi_gtest_main.cpp does).
void set_open_mpi_environment();

// A duplicate of `parent` on which coll/tuned runs all-reduce with `algorithm`, or MPI_COMM_NULL with `why_not`
// saying why this MPI cannot (not Open MPI, dynamic rules off, the user forced an algorithm or a rules file of
// their own). Collective over `parent`: every rank gets the same answer.
MPI_Comm duplicate_with_allreduce_algorithm(MPI_Comm parent, int algorithm, std::string* why_not);

}  // namespace ddprun::comm
