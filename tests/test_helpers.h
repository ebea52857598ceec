// What the unit tests of several modules share: the numbers tests/trainer/pytorch_reference.py prints, and a fresh
// temporary folder per test. Needs DDPRUN_SOURCE_DIR (ddprun_add_gtest defines it).
#pragma once

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace ddprun::test_support {

// Output of tests/trainer/pytorch_reference.py ARGS, one vector of numbers per line.
inline std::vector<std::vector<double>> python_reference(const std::string& args) {
  const std::string command =
      "/usr/bin/python3 " + std::string(DDPRUN_SOURCE_DIR) + "/tests/trainer/pytorch_reference.py " + args;
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(command.c_str(), "r"), pclose);
  std::vector<std::vector<double>> lines;
  char buffer[1 << 16];
  while (pipe && fgets(buffer, sizeof buffer, pipe.get())) {
    std::istringstream in(buffer);
    lines.emplace_back();
    for (double v; in >> v;) lines.back().push_back(v);
  }
  return lines;
}

// An empty folder of its own under the temporary directory (emptied if a previous run left it).
inline std::filesystem::path temp_folder(const std::string& name) {
  namespace fs = std::filesystem;
  fs::path dir = fs::temp_directory_path() / ("ddprun_test_" + name + "_" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

}  // namespace ddprun::test_support
