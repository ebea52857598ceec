// What ddprun's library throws: ddprun::Error, with the exit code a program should end with (launch_contract.h: 2
// bad options or calls, 3 failed before training, 4 diverged, 1 anything else during training) and whether every
// rank knows it. run_main (run.h) turns them into one line from rank 0 and that exit code.
#pragma once

#include "ddprun/launch_contract.h"

#include <stdexcept>
#include <string>

namespace ddprun {

class Error : public std::runtime_error {
 public:
  // `failed_rank`: the rank the failure happened on when every rank knows it and throws it too (an agreed failure,
  // reported once, by rank 0); -1 when only this rank knows (the other ranks are left waiting: the job must end).
  Error(int exit_code, const std::string& message, int failed_rank = -1)
      : std::runtime_error(message), exit_code_(exit_code), failed_rank_(failed_rank) {}
  int exit_code() const { return exit_code_; }
  int failed_rank() const { return failed_rank_; }
  bool on_every_rank() const { return failed_rank_ >= 0; }

 private:
  int exit_code_;
  int failed_rank_;
};

// A bad option or a call the library cannot honour (kExitUsage): fix the program; restarting repeats it.
class UsageError : public Error {
 public:
  explicit UsageError(const std::string& message, int failed_rank = -1) : Error(kExitUsage, message, failed_rank) {}
};

// Setting up failed: MPI, the launch, devices, data, the checkpoint folder, the checkpoint to resume
// (kExitSetUpFailed): restarting repeats it.
class SetUpError : public Error {
 public:
  explicit SetUpError(const std::string& message, int failed_rank = -1)
      : Error(kExitSetUpFailed, message, failed_rank) {}
};

// A NaN or inf loss stopped training (kExitDiverged): restarting from the last checkpoint diverges again.
class DivergedError : public Error {
 public:
  explicit DivergedError(const std::string& message, int failed_rank = -1)
      : Error(kExitDiverged, message, failed_rank) {}
};

}  // namespace ddprun
