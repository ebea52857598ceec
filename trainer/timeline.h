// --timeline FILE: a rank's steps as a Chrome trace (chrome://tracing, ui.perfetto.dev): the batch (its samples
// gathered and placed), forward, backward, the step check (the ranks' agreement on the loss and on stop signals) and
// the optimizer step on one track, each bucket's all-reduce from ready to done on another, so overlap can be seen.
// Rank 0's only, or with "{rank}" in FILE every rank's, each in its own file (process id = rank), on a time axis the
// ranks share, so that opened together they show which rank waits for which.
// scripts/bench/timeline_summary.py sums a trace per step.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace ddprun::trainer {

class Timeline {
 public:
  using Clock = std::chrono::steady_clock;
  enum Track { kCompute = 1, kAllReduce = 2 };

  // `path` as given to --timeline: empty records nothing; with "{rank}" (each occurrence replaced by the rank) every
  // rank records, else rank 0 only. Keeps at most `max_events` events (the first ones).
  Timeline(const std::string& path, int rank, size_t max_events = 50000);
  bool enabled() const { return !path_.empty(); }

  // Time 0 of the trace. Call it on every rank just after a collective all of them leave together, so that the
  // ranks' files share a time axis (to within the collective's latency), also across nodes whose clocks differ.
  void start_clock() { origin_ = Clock::now(); }

  // A span [begin, end) on a track; `args` is a JSON object's inside ("\"bucket\": 0") or empty.
  void span(const std::string& name, Track track, Clock::time_point begin, Clock::time_point end,
            const std::string& args = "");
  // Writes the trace (atomically: a temporary file renamed over FILE); throws std::runtime_error naming the path.
  void write() const;
  // Whether write() will be able to create its file: creates and removes the temporary one; throws as write() does,
  // with the system's reason. For set-up, so that a bad path fails the run at start, not after its first epoch.
  void check_writable() const;

 private:
  struct Event {
    std::string name;
    Track track;
    int64_t begin_us, duration_us;
    std::string args;
  };
  std::string path_;
  int rank_;
  size_t max_events_;
  Clock::time_point origin_ = Clock::now();
  std::vector<Event> events_;
  size_t dropped_ = 0;
};

}  // namespace ddprun::trainer
