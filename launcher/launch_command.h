// The command line that starts the ranks: mpirun (one rank per slot, no binding, the ranks' environment passed with
// -x) or srun --mpi=pmix; and the program's arguments for a restart (--resume auto).
#pragma once

#include "launcher/environment.h"
#include "launcher/job_shape.h"
#include "launcher/launch_options.h"

#include <string>
#include <vector>

namespace ddprun::launcher {

// Variables every rank gets from ddprun's environment when they are set, besides -x: exact names, then prefixes.
extern const char* const kPassedVariables[];
extern const char* const kPassedPrefixes[];

// mpirun or srun, its flags, then options.program (whose arguments get --resume auto when `restart` > 0). `env` is
// ddprun's environment as the launcher will inherit it. Throws UsageError for an -x srun cannot carry.
std::vector<std::string> build_launch_command(const LaunchOptions& options, const JobShape& shape,
                                              const Environment& env, int restart);

// The program's arguments with any --resume X / --resume=X replaced by a final --resume auto.
std::vector<std::string> with_resume_auto(const std::vector<std::string>& args);

// The words as one line a POSIX shell reads back as the same words.
std::string shell_line(const std::vector<std::string>& words);

}  // namespace ddprun::launcher
