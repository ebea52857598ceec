// The exit-code contract for your main: run_main runs it and turns what it throws into one line and the exit code
// ddprun understands (launch_contract.h), instead of an abort (exit 134) and a backtrace from every rank that ddprun
// would retry:
//   int main(int argc, char** argv) { return ddprun::run_main(argc, argv, train); }
// - a ddprun::Error every rank threw (errors.h: a failed save, a checkpoint that does not load, a diverged loss):
//   rank 0 prints "<program>: error[ on rank R]: <message>", every rank returns its exit code (2, 3, 4 are not
//   restarted by ddprun; 1 is, with --max-restarts);
// - anything thrown on one rank only (including std::exception from your own code): that rank prints it and ends
//   every rank of the job with its exit code (1 for a std::exception), so none is left waiting in a collective.
#pragma once

#include <functional>

namespace ddprun {

int run_main(int argc, char** argv, const std::function<int(int argc, char** argv)>& main);

}  // namespace ddprun
