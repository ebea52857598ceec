// Epoch summaries as text and JSON, the metrics.jsonl file and the live progress line.
#include "trainer/metrics.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <stdexcept>

namespace ddprun::trainer {

namespace {

// A JSON number, or null for NaN and infinities (a diverged loss), which JSON cannot hold.
std::string number(double value, const char* format) {
  if (!std::isfinite(value)) return "null";
  char text[64];
  std::snprintf(text, sizeof text, format, value);
  return text;
}

}  // namespace

std::string to_json(const EpochMetrics& m) {
  return "{\"epoch\": " + std::to_string(m.epoch) + ", \"train_loss\": " + number(m.train_loss, "%.6f") +
         ", \"test_acc1\": " + number(m.test_acc1, "%.4f") + ", \"test_acc5\": " + number(m.test_acc5, "%.4f") +
         ", \"images_per_sec\": " + number(m.images_per_sec, "%.2f") + ", \"lr\": " + number(m.lr, "%.10g") +
         ", \"epoch_seconds\": " + number(m.epoch_seconds, "%.3f") +
         ", \"checkpoint_stall_s\": " + number(m.checkpoint_stall_seconds, "%.4f") +
         ", \"world_size\": " + std::to_string(m.world_size) + ", \"resumed\": " + (m.resumed ? "true" : "false") +
         (m.has_ema ? ", \"test_acc1_ema\": " + number(m.test_acc1_ema, "%.4f") +
                          ", \"test_acc5_ema\": " + number(m.test_acc5_ema, "%.4f")
                    : std::string()) +
         (m.amp ? ", \"amp_scale\": " + number(m.amp_scale, "%.9g") +
                      ", \"amp_skipped_steps\": " + std::to_string(m.amp_skipped_steps)
                : std::string()) +
         "}";
}

std::string to_text(const EpochMetrics& m, int64_t epochs) {
  char line[512];
  std::snprintf(
      line, sizeof line,
      "epoch %lld/%lld  train_loss %.4f  test_acc1 %.2f%%  test_acc5 %.2f%%  images/s %.1f  lr %.6g  (%.1f s)",
      static_cast<long long>(m.epoch), static_cast<long long>(epochs - 1), m.train_loss, m.test_acc1, m.test_acc5,
      m.images_per_sec, m.lr, m.epoch_seconds);
  std::string text = line;
  if (m.has_ema) {
    std::snprintf(line, sizeof line, "  ema: test_acc1 %.2f%%  test_acc5 %.2f%%", m.test_acc1_ema, m.test_acc5_ema);
    text += line;
  }
  if (m.amp) {
    std::snprintf(line, sizeof line, "  amp scale %.6g (%lld skipped steps)", m.amp_scale,
                  static_cast<long long>(m.amp_skipped_steps));
    text += line;
  }
  return text;
}

void append_line(const std::string& path, const std::string& line) {
  std::ofstream out(path, std::ios::app);
  out << line << '\n';
  out.flush();
  if (!out) throw std::runtime_error("cannot append to '" + path + "'; check that --output-dir is writable");
}

ProgressLine::ProgressLine(bool enabled) : enabled_(enabled) {}

void ProgressLine::update(int64_t epoch, int64_t step, int64_t steps, double loss, double images_per_sec) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  if (step + 1 < steps && now - last_ < std::chrono::milliseconds(250)) return;
  last_ = now;
  std::printf("\repoch %lld [%lld/%lld]  loss %.4f  images/s %.1f   ", static_cast<long long>(epoch),
              static_cast<long long>(step + 1), static_cast<long long>(steps), loss, images_per_sec);
  std::fflush(stdout);
  drawn_ = true;
}

void ProgressLine::finish() {
  if (!drawn_) return;
  std::printf("\r\033[K");
  std::fflush(stdout);
  drawn_ = false;
}

}  // namespace ddprun::trainer
