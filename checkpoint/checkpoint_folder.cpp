// Listing, choosing and pruning the checkpoints of a run's folder.
#include "checkpoint/checkpoint_folder.h"

#include "comm/agreement.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <sstream>

namespace ddprun::checkpoint {

std::vector<std::pair<int64_t, std::string>> CheckpointFolder::epoch_files() const {
  std::vector<std::pair<int64_t, std::string>> files;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(path_, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.size() <= std::strlen("model_.pth") || name.rfind("model_", 0) != 0 ||
        name.compare(name.size() - 4, 4, ".pth") != 0)
      continue;
    const std::string number = name.substr(std::strlen("model_"), name.size() - std::strlen("model_.pth"));
    if (number.find_first_not_of("0123456789") != std::string::npos || number.size() > 18) continue;
    files.emplace_back(std::stoll(number), entry.path().string());
  }
  std::sort(files.begin(), files.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  return files;
}

std::vector<std::string> CheckpointFolder::newest_first() const {
  std::vector<std::string> paths;
  std::error_code ec;
  if (std::filesystem::exists(newest(), ec)) paths.push_back(newest());
  for (const auto& [epoch, path] : epoch_files()) paths.push_back(path);
  return paths;
}

bool CheckpointFolder::is_checkpoint_name(const std::string& name) {
  if (name == "checkpoint.pth" || name == kWriteProbe) return true;
  if (name.size() <= std::strlen("model_.pth") || name.rfind("model_", 0) != 0 ||
      name.compare(name.size() - 4, 4, ".pth") != 0)
    return false;
  const std::string number = name.substr(std::strlen("model_"), name.size() - std::strlen("model_.pth"));
  return number.find_first_not_of("0123456789") == std::string::npos;
}

void CheckpointFolder::keep_last(int keep, const std::string& program) const {
  if (keep <= 0) return;
  const auto files = epoch_files();
  for (size_t i = static_cast<size_t>(keep); i < files.size(); ++i) {
    std::error_code ec;
    std::filesystem::remove(files[i].second, ec);
    if (ec)
      std::fprintf(stderr, "%s: warning: keeping the last %d checkpoints: cannot remove %s: %s\n", program.c_str(),
                   keep, files[i].second.c_str(), ec.message().c_str());
  }
}

std::string load_newest(comm::Communicator& comm, const CheckpointFolder& folder, const std::string& program,
                        const std::string& folder_name, const std::string& call,
                        const std::function<void(const std::string& path)>& load) {
  const bool rank0 = comm.rank() == 0;
  // Rank 0's listing, so that every rank tries the same files in the same order.
  std::string listing;
  if (rank0)
    for (const std::string& path : folder.newest_first()) listing += path + "\n";
  listing = comm.allgather_bytes(listing)[0];
  std::vector<std::string> candidates;
  std::istringstream lines(listing);
  for (std::string line; std::getline(lines, line);) candidates.push_back(line);
  std::string chosen;
  for (const std::string& path : candidates) {
    try {
      load(path);
      chosen = path;
      break;
    } catch (const comm::CollectiveFailure& e) {
      if (rank0)
        std::fprintf(stderr, "%s: warning: %s: skipping a newer file: %s\n", program.c_str(), call.c_str(), e.what());
    }
  }
  comm::run_on_all_ranks(comm, [&] {
    if (chosen.empty() && !candidates.empty())
      throw SetUpError(call + ": none of the " + std::to_string(candidates.size()) + " checkpoints in " + folder_name +
                       " '" + folder.path() +
                       "' can be loaded (see the warnings above); move them away to start afresh");
  });
  return chosen;
}

}  // namespace ddprun::checkpoint
