// Building the mpirun / srun command line from the job's shape and ddprun's options.
#include "launcher/launch_command.h"

#include <algorithm>

namespace ddprun::launcher {

const char* const kPassedVariables[] = {"PATH", "LD_LIBRARY_PATH", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", nullptr};
const char* const kPassedPrefixes[] = {"NCCL_", "DDPRUN_", "OMP_", nullptr};

namespace {

bool passed_by_default(const std::string& name) {
  for (const char* const* v = kPassedVariables; *v; ++v)
    if (name == *v) return true;
  for (const char* const* p = kPassedPrefixes; *p; ++p)
    if (name.rfind(*p, 0) == 0) return true;
  return false;
}

std::string host_list(const JobShape& shape, bool with_slots) {
  std::string list;
  for (const Host& host : shape.hosts)
    list += (list.empty() ? "" : ",") + host.name + (with_slots ? ":" + std::to_string(host.slots) : "");
  return list;
}

std::vector<std::string> program_words(const LaunchOptions& options, int restart) {
  std::vector<std::string> words{options.program.front()};
  const std::vector<std::string> args(options.program.begin() + 1, options.program.end());
  for (const std::string& arg : restart > 0 ? with_resume_auto(args) : args) words.push_back(arg);
  return words;
}

}  // namespace

std::vector<std::string> with_resume_auto(const std::vector<std::string>& args) {
  std::vector<std::string> out;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--resume") {
      ++i;  // and its value
      continue;
    }
    if (args[i].rfind("--resume=", 0) == 0) continue;
    out.push_back(args[i]);
  }
  out.emplace_back("--resume");
  out.emplace_back("auto");
  return out;
}

std::vector<std::string> build_launch_command(const LaunchOptions& options, const JobShape& shape,
                                              const Environment& env, int restart) {
  const std::string path = options.launcher_path.empty() ? options.launcher : options.launcher_path;
  std::vector<std::string> command{path};
  if (options.launcher == "srun") {
    // srun passes ddprun's whole environment on by itself (--export=ALL); only -x VAR=VALUE needs saying.
    command.insert(command.end(), {"--mpi=pmix", "--ntasks=" + std::to_string(shape.ranks)});
    if (!shape.hosts.empty()) {
      command.push_back("--nodelist=" + host_list(shape, false));
      const int slots = shape.hosts.front().slots;
      const bool uniform =
          std::all_of(shape.hosts.begin(), shape.hosts.end(), [&](const Host& h) { return h.slots == slots; });
      if (uniform && slots * static_cast<int>(shape.hosts.size()) == shape.ranks)
        command.push_back("--ntasks-per-node=" + std::to_string(slots));
    }
    command.insert(command.end(), {"--cpu-bind=none", "--kill-on-bad-exit=1"});
    std::string assignments;
    for (const std::string& entry : options.exports) {
      if (entry.find('=') == std::string::npos) continue;
      if (entry.find(',') != std::string::npos)
        throw UsageError("-x '" + entry +
                         "': srun's --export cannot carry a value with a comma; set the variable "
                         "in ddprun's environment instead (srun passes it on)");
      assignments += "," + entry;
    }
    if (!assignments.empty()) command.push_back("--export=ALL" + assignments);
  } else {
    command.insert(command.end(), {"-np", std::to_string(shape.ranks), "--bind-to", "none", "--map-by", "slot"});
    if (shape.oversubscribe) command.emplace_back("--oversubscribe");
    if (!options.rsh_agent.empty()) command.insert(command.end(), {"--mca", "plm_rsh_agent", options.rsh_agent});
    if (!shape.hostfile.empty()) {
      command.insert(command.end(), {"--hostfile", shape.hostfile});
    } else if (!shape.hosts.empty()) {
      command.insert(command.end(), {"-H", host_list(shape, true)});
    }
    // -x VAR=VALUE sets the value; -x VAR passes this environment's value (remote ranks get nothing otherwise).
    std::vector<std::string> names;
    for (const auto& [name, value] : env)
      if (passed_by_default(name)) names.push_back(name);
    for (const std::string& entry : options.exports) {
      if (entry.find('=') != std::string::npos || lookup(env, entry)) names.push_back(entry);
    }
    std::vector<std::string> seen;
    for (const std::string& name : names) {
      if (std::find(seen.begin(), seen.end(), name) != seen.end()) continue;
      seen.push_back(name);
      command.insert(command.end(), {"-x", name});
    }
  }
  const std::vector<std::string> program = program_words(options, restart);
  command.insert(command.end(), program.begin(), program.end());
  return command;
}

std::string shell_line(const std::vector<std::string>& words) {
  std::string line;
  for (const std::string& word : words) {
    line += line.empty() ? "" : " ";
    if (!word.empty() && word.find_first_of(" \t\n'\"\\$`*?;&|<>()[]{}~#!") == std::string::npos) {
      line += word;
      continue;
    }
    line += "'";
    for (const char c : word) line += c == '\'' ? std::string("'\\''") : std::string(1, c);
    line += "'";
  }
  return line;
}

}  // namespace ddprun::launcher
