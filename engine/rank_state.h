// What only one rank knows and an exact resume needs: its random generators' states (CPU, and its GPU's) and the
// numbers the program keeps per rank (ddptrain: its share of the current epoch's loss). Rank 0 gathers every rank's
// state into the checkpoint; on resume each rank takes its own back.
#pragma once

#include "checkpoint/value.h"

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <string>
#include <utility>
#include <vector>

namespace ddprun::engine {

struct RankState {
  at::Tensor cpu_rng;     // the default CPU generator's state (uint8)
  at::Tensor device_rng;  // the default generator of the rank's GPU; undefined on a CPU rank
  // The rank's own numbers by name, each an int or a float Value, in the order they were registered.
  std::vector<std::pair<std::string, checkpoint::Value>> numbers;
};

// The generators' states now, with the rank's numbers.
RankState capture_rank_state(const c10::Device& device, std::vector<std::pair<std::string, checkpoint::Value>> numbers);
// Puts the generators back as captured. Throws std::runtime_error when the checkpoint was written on another kind
// of device (a GPU state cannot seed a CPU rank's generator).
void restore_rng(const RankState& state, const c10::Device& device);

// Bytes for the all-gather to rank 0, and back.
std::string encode(const RankState& state);
RankState decode(const std::string& bytes);

// As the checkpoint holds it: {"cpu_rng_state": uint8 tensor, "device_rng_state": tensor or None, <numbers>...};
// from_value throws std::runtime_error naming what is missing or malformed (a number must be an int or a finite
// float).
checkpoint::Value to_value(const RankState& state);
RankState from_value(const checkpoint::Value& value);

}  // namespace ddprun::engine
