// The rank count and host list of a job, from ddprun's flags, the visible GPUs and the Slurm allocation.
#include "launcher/job_shape.h"

#include "common/small_file.h"
#include "launcher/hostlist.h"

#include <dirent.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <sstream>
#include <stdexcept>

namespace ddprun::launcher {
namespace {

// A positive whole number from `name`'s text, or an error naming it.
int positive(const std::string& name, const std::string& text) {
  char* end = nullptr;
  errno = 0;
  const long value = std::strtol(text.c_str(), &end, 10);
  if (errno != 0 || end == text.c_str() || *end != '\0' || value < 1 || value > INT_MAX)
    throw std::invalid_argument(name + " '" + text + "' is not a positive whole number");
  return static_cast<int>(value);
}

int slot_sum(const std::vector<Host>& hosts) {
  return std::accumulate(hosts.begin(), hosts.end(), 0, [](int sum, const Host& h) { return sum + h.slots; });
}

bool every_host_has_slots(const std::vector<Host>& hosts) {
  for (const Host& h : hosts)
    if (h.slots == 0) return false;
  return !hosts.empty();
}

std::string plural(int n, const char* word) { return std::to_string(n) + " " + word + (n == 1 ? "" : "s"); }

}  // namespace

int count_visible_devices(const std::string& cuda_visible_devices) {
  int devices = 0;
  std::istringstream entries(cuda_visible_devices);
  for (std::string entry; std::getline(entries, entry, ',');) {
    // CUDA stops at the first entry it cannot use; Slurm writes NoDevFiles when the GPUs have no device files.
    if (entry.empty() || entry[0] == '-' || entry == "NoDevFiles") break;
    ++devices;
  }
  return devices;
}

int count_gpu_devices(const std::string& device_dir) {
  DIR* dir = opendir(device_dir.c_str());
  if (dir == nullptr) return 0;
  int devices = 0;
  while (const dirent* entry = readdir(dir)) {
    const char* name = entry->d_name;
    if (std::strncmp(name, "nvidia", 6) != 0 || name[6] == '\0') continue;
    bool digits = true;
    for (const char* c = name + 6; *c; ++c) digits = digits && std::isdigit(static_cast<unsigned char>(*c));
    devices += digits;
  }
  closedir(dir);
  return devices;
}

std::vector<Host> parse_hosts(const std::string& text) {
  std::vector<Host> hosts;
  std::istringstream items(text);
  for (std::string item; std::getline(items, item, ',');) {
    const size_t colon = item.find(':');
    Host host{item.substr(0, colon), 0};
    if (host.name.empty())
      throw std::invalid_argument("-H '" + text + "' has an empty host name; write HOST[:SLOTS],...");
    if (colon != std::string::npos)
      host.slots = positive("-H " + host.name + ": the slot count", item.substr(colon + 1));
    hosts.push_back(host);
  }
  if (hosts.empty()) throw std::invalid_argument("-H needs at least one host; write HOST[:SLOTS],...");
  return hosts;
}

std::vector<Host> read_hostfile(const std::string& path) {
  std::istringstream in(read_small_file(path, kMaxHostfileBytes, "--hostfile"));
  std::vector<Host> hosts;
  for (std::string line; std::getline(in, line);) {
    line = line.substr(0, line.find('#'));
    std::istringstream words(line);
    Host host;
    if (!(words >> host.name)) continue;
    for (std::string word; words >> word;) {
      if (word.rfind("slots=", 0) == 0) host.slots = positive(path + ": " + host.name + " slots", word.substr(6));
    }
    hosts.push_back(host);
  }
  if (hosts.empty()) throw std::invalid_argument("--hostfile '" + path + "' names no host");
  return hosts;
}

JobShape plan_job(const ShapeRequest& request, const Environment& env) {
  JobShape shape;
  const std::string* nodelist = lookup(env, "SLURM_JOB_NODELIST");
  if (nodelist == nullptr) nodelist = lookup(env, "SLURM_NODELIST");
  const bool in_slurm = lookup(env, "SLURM_JOB_ID") != nullptr || nodelist != nullptr;

  // Where: -H, a hostfile, or the Slurm allocation (its task counts as slots until GPUs say otherwise).
  std::string where;
  bool slots_given = false;
  std::vector<int> slurm_tasks;
  if (const std::string* tasks = lookup(env, "SLURM_TASKS_PER_NODE")) slurm_tasks = expand_tasks_per_node(*tasks);
  if (!request.hosts.empty()) {
    shape.hosts = parse_hosts(request.hosts);
    where = "-H";
    slots_given = every_host_has_slots(shape.hosts);
  } else if (!request.hostfile.empty()) {
    shape.hosts = read_hostfile(request.hostfile);
    shape.hostfile = request.hostfile;
    where = "--hostfile";
    slots_given = every_host_has_slots(shape.hosts);
  } else if (nodelist != nullptr && !nodelist->empty()) {
    for (const std::string& name : expand_hostlist(*nodelist)) shape.hosts.push_back({name, 0});
    where = "the Slurm allocation";
  }
  const int nodes = shape.hosts.empty() ? 1 : static_cast<int>(shape.hosts.size());

  // GPUs per node.
  int per_node = 0;
  std::string per_node_from;
  if (request.gpus_per_node > 0) {
    per_node = request.gpus_per_node;
    per_node_from = "--gpus-per-node";
  } else if (const std::string* visible = lookup(env, "CUDA_VISIBLE_DEVICES")) {
    per_node = count_visible_devices(*visible);
    per_node_from = "CUDA_VISIBLE_DEVICES";
  } else if (!in_slurm) {  // in a Slurm job, the GPUs it did not ask for are not its own
    per_node = count_gpu_devices(request.device_dir);
    per_node_from = "the GPUs in " + request.device_dir;
  }

  // How many.
  if (request.ranks > 0) {
    shape.ranks = request.ranks;
    shape.reason = plural(shape.ranks, "rank") + " (--np)";
  } else if (slots_given) {
    shape.ranks = slot_sum(shape.hosts);
    shape.reason = plural(shape.ranks, "rank") + " (the slots of " + where + ")";
  } else if (per_node > 0) {
    shape.ranks = per_node * nodes;
    shape.reason = plural(shape.ranks, "rank") + ": " + plural(per_node, "GPU") + " per node (" + per_node_from +
                   ") x " + plural(nodes, "node");
  } else if (const std::string* ntasks = lookup(env, "SLURM_NTASKS")) {
    shape.ranks = positive("SLURM_NTASKS", *ntasks);
    shape.reason = plural(shape.ranks, "rank") + " (SLURM_NTASKS)";
  } else if (const std::string* per = lookup(env, "SLURM_NTASKS_PER_NODE"); per && lookup(env, "SLURM_JOB_NUM_NODES")) {
    shape.ranks =
        positive("SLURM_JOB_NUM_NODES", *lookup(env, "SLURM_JOB_NUM_NODES")) * positive("SLURM_NTASKS_PER_NODE", *per);
    shape.reason = plural(shape.ranks, "rank") + " (SLURM_JOB_NUM_NODES x SLURM_NTASKS_PER_NODE)";
  } else if (!slurm_tasks.empty()) {
    shape.ranks = std::accumulate(slurm_tasks.begin(), slurm_tasks.end(), 0);
    shape.reason = plural(shape.ranks, "rank") + " (SLURM_TASKS_PER_NODE)";
  } else if (!shape.hosts.empty()) {
    shape.ranks = nodes;
    shape.reason = plural(shape.ranks, "rank") + " (one per host of " + where + ")";
  } else {
    shape.ranks = 1;
    shape.reason = "1 rank (no --np, no GPU, no Slurm allocation)";
  }

  // Slots where they were not given: the GPUs per node, else Slurm's tasks on that node, else an even share.
  const int even_share = (shape.ranks + nodes - 1) / nodes;
  for (size_t i = 0; i < shape.hosts.size(); ++i) {
    Host& host = shape.hosts[i];
    if (host.slots > 0) continue;
    if (per_node > 0) {
      host.slots = per_node;
    } else if (where == "the Slurm allocation" && slurm_tasks.size() == shape.hosts.size()) {
      host.slots = slurm_tasks[i];
    } else {
      host.slots = even_share;
    }
  }
  // A hostfile line without slots= would give mpirun the host's core count: pass the planned slots with -H.
  if (!shape.hostfile.empty() && !slots_given) shape.hostfile.clear();
  for (const Host& host : shape.hosts) {
    if (host.slots > kMaxSlotsPerHost)
      throw std::invalid_argument(where + " gives host " + host.name + " " + plural(host.slots, "slot") +
                                  ", more than the " + std::to_string(kMaxSlotsPerHost) +
                                  " ranks ddprun starts on one host; give one rank per GPU (or core)");
  }
  if (!shape.hosts.empty()) {
    const int slots = slot_sum(shape.hosts);
    if (shape.ranks > slots)
      throw std::invalid_argument(plural(shape.ranks, "rank") + " do not fit the " + plural(slots, "slot") + " of " +
                                  where + "; give fewer ranks (--np) or more slots (HOST:SLOTS)");
    shape.reason += " on " + plural(nodes, "host") + " (" + where + ")";
  } else {
    const long most = static_cast<long>(kMaxRanksPerCore) * std::max(1, request.local_cores);
    if (shape.ranks > most)
      throw std::invalid_argument(plural(shape.ranks, "rank") + " on this node's " +
                                  plural(request.local_cores, "core") + " is more than " + std::to_string(most) + " (" +
                                  std::to_string(kMaxRanksPerCore) +
                                  " per core), which would flood it; give fewer ranks (--np) or name more hosts (-H)");
    shape.oversubscribe = shape.ranks > request.local_cores;
    shape.reason += " on this node";
  }
  if (request.process_limit >= 0 && shape.ranks > request.process_limit)
    throw std::invalid_argument(plural(shape.ranks, "rank") + " exceed this user's process limit (ulimit -u " +
                                std::to_string(request.process_limit) + "); give fewer ranks (--np)");
  return shape;
}

}  // namespace ddprun::launcher
