// The Chrome trace writer behind --timeline.
#include "trainer/timeline.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>

namespace ddprun::trainer {

namespace {

const std::string kRankField = "{rank}";

std::string path_of_rank(const std::string& path, int rank) {
  if (path.find(kRankField) == std::string::npos) return rank == 0 ? path : std::string();
  std::string result;
  for (size_t at = 0;;) {
    const size_t field = path.find(kRankField, at);
    result += path.substr(at, field == std::string::npos ? std::string::npos : field - at);
    if (field == std::string::npos) return result;
    result += std::to_string(rank);
    at = field + kRankField.size();
  }
}

// The one line every failure to write the timeline says: which file, why (errno's text, when a call set it), what
// to do.
std::runtime_error cannot_write(const std::string& path, const std::string& why = "") {
  const std::string reason = !why.empty() ? why : errno != 0 ? std::strerror(errno) : "the write failed";
  return std::runtime_error("cannot write --timeline '" + path + "' (" + reason +
                            "); give a file in a folder this user can write, on a disk with room");
}

}  // namespace

Timeline::Timeline(const std::string& path, int rank, size_t max_events)
    : path_(path_of_rank(path, rank)), rank_(rank), max_events_(max_events) {}

void Timeline::span(const std::string& name, Track track, Clock::time_point begin, Clock::time_point end,
                    const std::string& args) {
  if (!enabled()) return;
  if (events_.size() >= max_events_) {
    ++dropped_;
    return;
  }
  const auto us = [&](Clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::microseconds>(t - origin_).count();
  };
  events_.push_back({name, track, us(begin), std::max<int64_t>(us(end) - us(begin), 0), args});
}

void Timeline::check_writable() const {
  if (!enabled()) return;
  const std::string temporary = path_ + ".tmp";
  std::FILE* probe = std::fopen(temporary.c_str(), "w");
  if (probe == nullptr) throw cannot_write(path_);
  std::fclose(probe);
  std::remove(temporary.c_str());
}

void Timeline::write() const {
  if (!enabled()) return;
  const std::string temporary = path_ + ".tmp";
  {
    errno = 0;
    std::ofstream out(temporary);
    if (!out) throw cannot_write(path_);
    const int pid = rank_;
    out << "{\"displayTimeUnit\": \"ms\", \"otherData\": {\"rank\": " << rank_ << ", \"events_dropped\": " << dropped_
        << "}, \"traceEvents\": [\n";
    out << "{\"name\": \"process_name\", \"ph\": \"M\", \"pid\": " << pid << ", \"args\": {\"name\": \"rank " << rank_
        << "\"}},\n";
    out << "{\"name\": \"thread_name\", \"ph\": \"M\", \"pid\": " << pid << ", \"tid\": " << kCompute
        << ", \"args\": {\"name\": \"compute\"}},\n";
    out << "{\"name\": \"thread_name\", \"ph\": \"M\", \"pid\": " << pid << ", \"tid\": " << kAllReduce
        << ", \"args\": {\"name\": \"all-reduce (ready to done)\"}}";
    for (const Event& e : events_) {
      out << ",\n{\"name\": \"" << e.name << "\", \"ph\": \"X\", \"pid\": " << pid << ", \"tid\": " << e.track
          << ", \"ts\": " << e.begin_us << ", \"dur\": " << e.duration_us << ", \"args\": {" << e.args << "}}";
    }
    out << "\n]}\n";
    if (!out.flush()) {
      const std::runtime_error error = cannot_write(path_);
      std::remove(temporary.c_str());  // no half-written file left beside the trace
      throw error;
    }
  }
  std::error_code error;
  std::filesystem::rename(temporary, path_, error);
  if (error) {
    std::remove(temporary.c_str());
    throw cannot_write(path_, error.message());
  }
}

}  // namespace ddprun::trainer
