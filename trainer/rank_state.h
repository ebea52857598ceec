// What only one rank knows and an exact resume needs: its random generators' states (CPU, and its GPU's) and its
// share of the current epoch's loss. Rank 0 gathers every rank's state into the checkpoint; on resume each rank
// takes its own back.
#pragma once

#include "checkpoint/value.h"

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <string>

namespace ddprun::trainer {

struct RankState {
  at::Tensor cpu_rng;     // the default CPU generator's state (uint8)
  at::Tensor device_rng;  // the default generator of the rank's GPU; undefined on a CPU rank
  double loss_sum = 0;    // sum of the epoch's per-sample losses so far
  int64_t samples = 0;    // the samples in loss_sum
};

// The generators' states now, with the epoch's loss so far.
RankState capture_rank_state(const c10::Device& device, double loss_sum, int64_t samples);
// Puts the generators back as captured. Throws std::runtime_error when the checkpoint was written on another kind
// of device (a GPU state cannot seed a CPU rank's generator).
void restore_rng(const RankState& state, const c10::Device& device);

// Bytes for the all-gather to rank 0, and back.
std::string encode(const RankState& state);
RankState decode(const std::string& bytes);

// As the checkpoint holds it: {"cpu_rng_state": uint8 tensor, "device_rng_state": tensor or None, "train_loss_sum",
// "train_samples"}; from_value throws std::runtime_error naming what is missing or malformed.
checkpoint::Value to_value(const RankState& state);
RankState from_value(const checkpoint::Value& value);

}  // namespace ddprun::trainer
