// ddprun: starts one ddptrain rank per device through mpirun, then becomes mpirun (exec), so signals and the exit
// status pass straight through. It shares no code with the ranks: it only builds a command line.
// Its own errors (bad options, no mpirun) exit with 2.
//
//   ddprun [--np N] [--mpirun PATH] [-x VAR]... [--dry-run] -- PROGRAM [ARGS...]
#include <sched.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr const char* kUsage =
    "usage: ddprun [options] -- PROGRAM [ARGS...]\n"
    "Starts PROGRAM (usually ddptrain) once per rank with mpirun.\n"
    "  --np N, -np N   number of ranks (default: SLURM_NTASKS, else the devices in CUDA_VISIBLE_DEVICES, else 1)\n"
    "  --mpirun PATH   the mpirun to use (default: mpirun from PATH)\n"
    "  -x VAR[=VALUE]  pass the environment variable VAR (or set it to VALUE) on every rank (repeatable;\n"
    "                  PATH, LD_LIBRARY_PATH, OMP_NUM_THREADS and NCCL_* are always passed)\n"
    "  --dry-run       print the mpirun command and exit\n"
    "  -h, --help      print this help\n"
    "A PROGRAM named without a folder that sits next to ddprun (ddptrain) is started from there.\n";

[[noreturn]] void fail(const std::string& message) {
  std::fprintf(stderr, "ddprun: error: %s\n", message.c_str());
  std::exit(2);
}

int parse_count(const std::string& flag, const char* text) {
  char* end = nullptr;
  errno = 0;
  const long value = std::strtol(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || value < 1 || value > INT_MAX)
    fail(flag + " '" + text + "' is not a positive whole number");
  return static_cast<int>(value);
}

std::string folder_of_this_program() {
  char path[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
  if (n <= 0) return "";
  std::string self(path, static_cast<size_t>(n));
  return self.substr(0, self.rfind('/'));
}

int default_rank_count() {
  if (const char* tasks = std::getenv("SLURM_NTASKS")) return parse_count("SLURM_NTASKS", tasks);
  if (const char* visible = std::getenv("CUDA_VISIBLE_DEVICES"); visible && *visible) {
    int devices = 1;
    for (const char* c = visible; *c; ++c) devices += *c == ',';
    return devices;
  }
  return 1;
}

int cores_available() {
  cpu_set_t set;
  CPU_ZERO(&set);
  return sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
}

std::string quoted(const std::string& word) {
  if (!word.empty() && word.find_first_of(" \t\n'\"\\$`*?;&|<>()") == std::string::npos) return word;
  std::string out = "'";
  for (char c : word) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

}  // namespace

int main(int argc, char** argv) {
  int ranks = 0;
  bool dry_run = false;
  std::string mpirun = "mpirun";
  std::vector<std::string> exported{"PATH", "LD_LIBRARY_PATH", "OMP_NUM_THREADS", "DDPRUN_PROGRESS"};
  int i = 1;
  for (; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) fail(arg + " needs a value; see ddprun --help");
      return argv[++i];
    };
    if (arg == "--") {
      ++i;
      break;
    } else if (arg == "--np" || arg == "-np" || arg == "-n") {
      ranks = parse_count(arg, value());
    } else if (arg == "--mpirun") {
      mpirun = value();
    } else if (arg == "-x") {
      exported.emplace_back(value());
    } else if (arg == "--dry-run") {
      dry_run = true;
    } else if (arg == "-h" || arg == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    } else {
      fail("unknown option '" + arg + "'; put the program after '--' (ddprun --np 2 -- ddptrain ...)");
    }
  }
  if (i >= argc) fail("no program to start; usage: ddprun --np 2 -- ddptrain [ARGS...]");
  if (ranks == 0) ranks = default_rank_count();

  std::string program = argv[i];
  if (program.find('/') == std::string::npos) {
    const std::string beside = folder_of_this_program() + "/" + program;
    if (access(beside.c_str(), X_OK) == 0) program = beside;
  }

  // Ranks cannot tell whether mpirun's output reaches a terminal (their stdout is a pseudo-terminal either way).
  setenv("DDPRUN_PROGRESS", isatty(STDOUT_FILENO) ? "1" : "0", 0);
  std::vector<std::string> command{mpirun, "-np", std::to_string(ranks), "--bind-to", "none", "--map-by", "slot"};
  if (ranks > cores_available()) command.emplace_back("--oversubscribe");
  for (char** env = environ; *env; ++env) {
    const std::string entry = *env;
    if (entry.rfind("NCCL_", 0) == 0) exported.push_back(entry.substr(0, entry.find('=')));
  }
  for (const std::string& name : exported) {
    // -x VAR=value sets the value for the ranks; -x VAR passes this environment's value when there is one.
    if (name.find('=') != std::string::npos || std::getenv(name.c_str())) {
      command.emplace_back("-x");
      command.push_back(name);
    }
  }
  command.push_back(program);
  for (int j = i + 1; j < argc; ++j) command.emplace_back(argv[j]);

  if (dry_run) {
    std::string line;
    for (const std::string& word : command) line += (line.empty() ? "" : " ") + quoted(word);
    std::printf("%s\n", line.c_str());
    return 0;
  }
  if (geteuid() == 0) {
    // Open MPI refuses to start as root unless both are set; ddprun's users on containers and CI run as root.
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 0);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 0);
  }
  std::vector<char*> args;
  for (std::string& word : command) args.push_back(word.data());
  args.push_back(nullptr);
  execvp(args[0], args.data());
  fail("cannot start '" + mpirun + "': " + std::strerror(errno) + "; install openmpi-bin or pass --mpirun PATH");
}
