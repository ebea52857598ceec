// main() for GoogleTest binaries that run under mpirun: MPI is started once for all tests, every rank runs every
// test (MPI set up as ddprun's communicator sets it up), and only rank 0 prints GoogleTest's report (a failure on any
// rank fails the process, so ctest sees it).
#include "comm/open_mpi_settings.h"

#include <gtest/gtest.h>
#include <mpi.h>

int main(int argc, char** argv) {
  int provided = 0;
  ddprun::comm::set_open_mpi_environment();  // as ddprun's communicator does when it starts MPI
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  ::testing::InitGoogleTest(&argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  int any_failed = 0;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (failed) fprintf(stderr, "rank %d: some tests failed\n", rank);
  MPI_Finalize();
  return any_failed;
}
