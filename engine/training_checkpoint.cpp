// The training checkpoint's one writer and one reader, and the entries a program's objects make.
#include "engine/training_checkpoint.h"

#include "checkpoint/module_state.h"
#include "engine/optimizer_state.h"
#include "engine/sample_order.h"

#include <ATen/core/grad_mode.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/isnan.h>

#include <climits>
#include <limits>
#include <set>
#include <stdexcept>

namespace ddprun::engine {
namespace {

using checkpoint::Value;

const char* const kTorchvisionKeys[] = {"model", "optimizer", "lr_scheduler", "epoch", "args"};

const Entry* find_entry(const std::vector<Entry>& entries, const std::string& key) {
  for (const Entry& e : entries)
    if (e.key == key) return &e;
  return nullptr;
}

bool is_torchvision_key(const std::string& key) {
  for (const char* k : kTorchvisionKeys)
    if (key == k) return true;
  return false;
}

// A module's saved state holding NaN anywhere, or inf in a parameter, comes from a run that had diverged: refused
// rather than trained on (an inf buffer can be meant: an attention mask's -inf).
void refuse_non_finite(const std::string& key, torch::nn::Module& module, const Value& saved) {
  if (!saved.is_mapping()) return;  // prepare_module_state_dict says what is wrong with it
  std::set<std::string> parameters;
  for (const auto& item : module.named_parameters()) parameters.insert(item.key());
  for (const auto& [name, value] : saved.entries()) {
    if (!name.is_string() || !value.is_tensor() || !value.to_tensor().is_floating_point()) continue;
    std::string bare = name.to_string();
    if (bare.rfind("module.", 0) == 0 && !parameters.count(bare)) bare.erase(0, 7);
    const at::Tensor& t = value.to_tensor();
    const bool bad = parameters.count(bare) ? !at::isfinite(t).all().item<bool>() : at::isnan(t).any().item<bool>();
    if (bad)
      throw std::runtime_error("its " + key + " entry '" + name.to_string() +
                               "' holds NaN or inf values: the run that saved it had diverged; resume from an "
                               "earlier checkpoint");
  }
}

bool is_empty_dict(const Value& v) { return v.is_mapping() && v.entries().empty(); }

}  // namespace

Entry module_entry(const std::string& key, torch::nn::Module& module) {
  return {key, [&module] { return checkpoint::module_state_dict(module); },
          [&module, key](const Value& saved) -> std::function<void()> {
            refuse_non_finite(key, module, saved);
            return checkpoint::prepare_module_state_dict(module, saved);
          }};
}

Entry optimizer_entry(const std::string& key, torch::optim::Optimizer& optimizer, std::function<LearningRate*()> rate) {
  return {key,
          [&optimizer, rate] {
            LearningRate* r = rate();
            return optimizer_state_dict(optimizer, r ? r->initial_lr() : std::nullopt);
          },
          [&optimizer, rate, key](const Value& saved) -> std::function<void()> {
            if (is_empty_dict(saved))
              throw std::runtime_error("its '" + key + "' entry is empty: the program that saved it had no optimizer");
            auto load = prepare_optimizer_state_dict(optimizer, saved);
            return [load, rate] {
              const std::optional<double> initial = load();
              if (LearningRate* r = rate(); r && initial) r->set_initial_lr(*initial);
            };
          }};
}

Entry schedule_entry(const std::string& key, LrSchedule& schedule) {
  return {key, [&schedule] { return schedule.state_dict(); },
          [&schedule, key](const Value& saved) -> std::function<void()> {
            if (is_empty_dict(saved))
              throw std::runtime_error("its '" + key +
                                       "' entry is empty: the program that saved it had no learning-rate schedule");
            // A trial load (a schedule loads all of a state or none of it, and touches nothing else), then back.
            const Value before = schedule.state_dict();
            schedule.load_state_dict(saved);
            const Value loaded = schedule.state_dict();
            schedule.load_state_dict(before);
            return [&schedule, loaded] { schedule.load_state_dict(loaded); };
          }};
}

Entry tensor_entry(const std::string& key, at::Tensor& tensor) {
  return {key, [&tensor] { return Value(tensor.detach()); },
          [&tensor, key](const Value& saved) -> std::function<void()> {
            if (!saved.is_tensor())
              throw std::runtime_error("its '" + key + "' entry is a " + saved.kind_name() + ", not a tensor");
            const at::Tensor& t = saved.to_tensor();
            if (tensor.defined() && (!t.sizes().equals(tensor.sizes()) || t.scalar_type() != tensor.scalar_type()))
              throw std::runtime_error("its '" + key + "' entry is a " + std::string(c10::toString(t.scalar_type())) +
                                       " tensor of shape " + c10::str(t.sizes()) + "; the program's is " +
                                       c10::toString(tensor.scalar_type()) + " " + c10::str(tensor.sizes()));
            return [&tensor, t] {
              at::NoGradGuard no_grad;
              if (tensor.defined()) {
                tensor.copy_(t);
              } else {
                tensor = t.clone();
              }
            };
          }};
}

Entry number_entry(const std::string& key, double& value) {
  return {key, [&value] { return Value(value); },
          [&value, key](const Value& saved) -> std::function<void()> {
            const double v = saved.to_double_in(-std::numeric_limits<double>::max(), std::numeric_limits<double>::max(),
                                                "its '" + key + "' entry");
            return [&value, v] { value = v; };
          }};
}

Entry number_entry(const std::string& key, int64_t& value) {
  return {key, [&value] { return Value(value); },
          [&value, key](const Value& saved) -> std::function<void()> {
            const int64_t v = saved.to_int_in(INT64_MIN, INT64_MAX, "its '" + key + "' entry");
            return [&value, v] { value = v; };
          }};
}

Entry text_entry(const std::string& key, std::string& value) {
  return {key, [&value] { return Value(value); },
          [&value, key](const Value& saved) -> std::function<void()> {
            if (!saved.is_string())
              throw std::runtime_error("its '" + key + "' entry is a " + saved.kind_name() + ", not a string");
            return [&value, v = saved.to_string()] { value = v; };
          }};
}

Entry args_entry(std::function<Value()> args) { return {"args", std::move(args), nullptr}; }

Value write_training_checkpoint(const std::vector<Entry>& entries, Position at, int world_size,
                                const std::optional<SamplerState>& sampler, const std::vector<RankState>& ranks) {
  const Entry* model = find_entry(entries, "model");
  if (model == nullptr) throw std::logic_error("a training checkpoint needs a 'model' entry");
  Value object = Value::dict();
  for (const char* key : kTorchvisionKeys) {
    if (std::string(key) == "epoch") {
      object.set("epoch", at.epoch - 1);  // the last finished epoch, as torchvision's train.py reads it
    } else if (const Entry* e = find_entry(entries, key)) {
      object.set(key, e->write());
    } else {
      object.set(key, Value::dict());
    }
  }
  for (const Entry& e : entries)
    if (!is_torchvision_key(e.key)) object.set(e.key, e.write());
  Value rank_states = Value::list();
  for (const RankState& r : ranks) rank_states.append(to_value(r));
  Value extra = Value::dict({{"format_version", kTrainingCheckpointFormat}, {"world_size", world_size}});
  if (sampler) extra.set("batch_size", sampler->batch_size);
  extra.set("step_in_epoch", at.step);
  if (sampler)
    extra.set("sampler", Value::dict({{"seed", sampler->seed},
                                      {"epoch", at.epoch},
                                      {"position", at.step * sampler->batch_size},
                                      {"shuffle", sampler->shuffle}}));
  extra.set("rank_states", rank_states);
  object.set("ddprun", extra);
  return object;
}

Resume read_training_checkpoint(const Value& saved, const std::vector<Entry>& entries, int world_size, int rank,
                                const std::optional<SamplerState>& sampler) {
  if (!saved.is_mapping())
    throw std::runtime_error(std::string("holds a ") + saved.kind_name() +
                             ", not a training checkpoint (a dict with model, optimizer, lr_scheduler, epoch)");
  for (const std::string key : {"model", "epoch"}) {
    if (!saved.find(key))
      throw std::runtime_error("is not a training checkpoint: it has no '" + key +
                               "' entry (expected model, optimizer, lr_scheduler, epoch)");
  }
  std::vector<std::function<void()>> changes;
  for (const Entry& e : entries) {
    if (!e.read) continue;
    const Value* value = saved.find(e.key);
    if (value == nullptr)
      throw std::runtime_error("it has no '" + e.key + "' entry, which this program restores" +
                               (is_torchvision_key(e.key) ? " (a torchvision checkpoint has model, optimizer, "
                                                            "lr_scheduler, epoch)"
                                                          : ""));
    changes.push_back(e.read(*value));
  }
  Resume resume;
  resume.apply = [changes = std::move(changes)] {
    for (const auto& change : changes) change();
  };
  resume.at.epoch = saved.at("epoch").to_int_in(-1, kMaxEpochs - 1, "its 'epoch' (the last finished one)") + 1;

  // Where in the epoch to go on, from the "ddprun" entry (none: the file is from the end of an epoch, as Python's
  // torchvision writes them). Every number is read with the range it can have: a file with epoch 2^32, a negative
  // sampler position or a world of 0 is refused, not trained from.
  const Value* extra = saved.find("ddprun");
  if (extra == nullptr) return resume;
  const int64_t format = extra->at("format_version").to_int_in(1, INT64_MAX, "its format_version");
  if (format > kTrainingCheckpointFormat)
    throw std::runtime_error("was written by a newer ddprun (checkpoint format " + std::to_string(format) +
                             ", this one reads up to " + std::to_string(kTrainingCheckpointFormat) +
                             "); update ddprun");
  const int64_t world = extra->at("world_size").to_int_in(1, kMaxWorldSize, "its world_size");
  // Samples per rank of the saving run when the data set is known (the sampler pads to a multiple of the world).
  const int64_t per_rank = sampler ? samples_per_rank(sampler->dataset_size, static_cast<int>(world)) : INT32_MAX;
  const Value* saved_batch = extra->find("batch_size");
  const int64_t batch = saved_batch ? saved_batch->to_int_in(1, INT32_MAX, "its batch_size") : 0;
  const int64_t step =
      extra->at("step_in_epoch")
          .to_int_in(0, batch > 0 ? (per_rank + batch - 1) / batch : int64_t{1} << 40, "its step_in_epoch");
  int64_t position = -1;  // samples per rank done in the epoch, when the file says
  int64_t seed = 0;
  if (const Value* s = extra->find("sampler")) {
    const int64_t sampler_epoch = s->at("epoch").to_int_in(0, kMaxEpochs, "its sampler's epoch");
    if (sampler_epoch != resume.at.epoch)
      throw std::runtime_error("is inconsistent: its sampler is at epoch " + std::to_string(sampler_epoch) +
                               " but its 'epoch' entry says " + std::to_string(resume.at.epoch - 1) + " was the last");
    position =
        s->at("position")
            .to_int_in(0, per_rank,
                       "its sampler's position (samples each of its " + std::to_string(world) + " ranks trained)");
    if (batch > 0 && position != step * batch)
      throw std::runtime_error("is inconsistent: its sampler's position " + std::to_string(position) +
                               " is not its step_in_epoch " + std::to_string(step) + " times its batch_size " +
                               std::to_string(batch));
    seed = s->at("seed").to_int_in(0, INT64_MAX, "its sampler's seed");
  }
  const Value& ranks = extra->at("rank_states");
  if (!ranks.is_sequence() || static_cast<int64_t>(ranks.items().size()) != world)
    throw std::runtime_error("holds " + std::to_string(ranks.is_sequence() ? ranks.items().size() : 0) +
                             " rank states for " + std::to_string(world) + " ranks");
  const bool same_batch = !sampler || batch == 0 || batch == sampler->batch_size;
  if (world == world_size && same_batch) {
    resume.at.step = step;
    resume.rank_state = from_value(ranks.items()[static_cast<size_t>(rank)]);
    if (sampler && position >= 0 && seed != sampler->seed)
      resume.note = "its data order was drawn with seed " + std::to_string(seed) + ", this run's sampler has " +
                    std::to_string(sampler->seed) + ": the rest of the epoch sees a different order";
    return resume;
  }
  // Another world or batch size: the same number of samples seen across all ranks, in whole steps of this run.
  if (position >= 0 && sampler && sampler->batch_size > 0) {
    resume.at.step = position * world / (sampler->batch_size * world_size);
    resume.note = "written by " + std::to_string(world) + " rank(s) with batch size " + std::to_string(batch) +
                  ", this run has " + std::to_string(world_size) + " with " + std::to_string(sampler->batch_size) +
                  ": the data order and the random streams are re-derived for this run, and epoch " +
                  std::to_string(resume.at.epoch) + " continues at step " + std::to_string(resume.at.step) +
                  " (the same number of samples seen); training continues correctly but not bit-identically to an "
                  "uninterrupted run";
  } else {
    resume.at.step = step;
    resume.note = "written by " + std::to_string(world) + " rank(s), this run has " + std::to_string(world_size) +
                  ": the random streams start afresh";
  }
  return resume;
}

}  // namespace ddprun::engine
