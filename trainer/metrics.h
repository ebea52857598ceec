// What rank 0 reports: one line per epoch on stdout, a live progress line when stdout is a terminal, and one JSON
// object per epoch appended to <output-dir>/metrics.jsonl.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace ddprun::trainer {

struct EpochMetrics {
  int64_t epoch = 0;
  double train_loss = 0;
  double test_acc1 = 0;  // percent
  double test_acc5 = 0;  // percent: the label among the 5 highest scores
  double images_per_sec = 0;
  double lr = 0;  // the learning rate the epoch trained with
  double epoch_seconds = 0;
  double checkpoint_stall_seconds = 0;  // how long the epoch's checkpoints held training up (rank 0's view)
  int world_size = 1;
  bool resumed = false;  // the first epoch of a run that continued from a checkpoint (a restart, a requeue)
  bool has_ema = false;  // --model-ema: the average's accuracy too
  double test_acc1_ema = 0;
  double test_acc5_ema = 0;
  bool amp = false;  // --amp: the GradScaler's scale at the epoch's end and the steps it skipped (inf/NaN gradients)
  double amp_scale = 0;
  int64_t amp_skipped_steps = 0;
};

std::string to_json(const EpochMetrics& m);
std::string to_text(const EpochMetrics& m, int64_t epochs);

// Appends a line to `path`; throws std::runtime_error naming the path when it cannot.
void append_line(const std::string& path, const std::string& line);

// A progress line redrawn in place ("\r"), at most a few times a second; silent when stdout is not a terminal.
class ProgressLine {
 public:
  explicit ProgressLine(bool enabled);
  void update(int64_t epoch, int64_t step, int64_t steps, double loss, double images_per_sec);
  void finish();  // clears the line before the epoch's summary is printed

 private:
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point last_{};
};

}  // namespace ddprun::trainer
