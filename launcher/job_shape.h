// How many ranks ddprun starts and on which hosts, worked out from its flags, the GPUs it sees and the Slurm
// allocation it runs in (one place, so that the rule is written once and tested).
//
// Ranks: --np; else the slots given with -H or a hostfile; else GPUs per node (--gpus-per-node, else
// CUDA_VISIBLE_DEVICES, else outside Slurm the nvidiaN devices present) x nodes; else the Slurm allocation
// (SLURM_NTASKS, else SLURM_JOB_NUM_NODES x SLURM_NTASKS_PER_NODE, else SLURM_TASKS_PER_NODE's sum); else one per
// host given; else 1.
// Hosts: -H, else a hostfile, else the Slurm allocation (SLURM_JOB_NODELIST); none: this node.
#pragma once

#include "launcher/environment.h"

#include <cstddef>
#include <string>
#include <vector>

namespace ddprun::launcher {

struct Host {
  std::string name;
  int slots = 0;  // ranks it takes; 0 while not known
};

struct ShapeRequest {
  int ranks = 0;                    // --np (0: work it out)
  int gpus_per_node = 0;            // --gpus-per-node (0: look)
  std::string hosts;                // -H "a:2,b:2"
  std::string hostfile;             // --hostfile, Open MPI's format ("a slots=2")
  std::string device_dir = "/dev";  // where GPUs appear as nvidia0, nvidia1, ...
  int local_cores = 1;              // cores this process may use (for --oversubscribe)
  long process_limit = -1;          // RLIMIT_NPROC's soft limit for this user (-1: unlimited)
};

// The most ranks ddprun starts: per core of this node when every rank runs here (mpirun --oversubscribe would start
// any number, and flood the node until it fails), and per host named with -H, a hostfile or Slurm.
constexpr int kMaxRanksPerCore = 16;
constexpr int kMaxSlotsPerHost = 1024;

struct JobShape {
  int ranks = 1;
  std::vector<Host> hosts;     // every host with its slots; empty: all ranks on this node
  std::string hostfile;        // given with --hostfile: passed on as is
  bool oversubscribe = false;  // more ranks than this node's cores, all on this node
  std::string reason;          // how ranks and hosts were chosen, for the start-up line
};

// Throws std::invalid_argument with one line naming the flag or variable it cannot use, or saying why the hosts
// cannot hold that many ranks.
JobShape plan_job(const ShapeRequest& request, const Environment& env);

// The GPUs CUDA_VISIBLE_DEVICES lets a process see: its entries up to the first invalid one ("-1", "NoDevFiles").
int count_visible_devices(const std::string& cuda_visible_devices);

// The nvidiaN character devices in `device_dir`.
int count_gpu_devices(const std::string& device_dir);

// -H "a:2,b,c:4" (slots 0 where not given).
std::vector<Host> parse_hosts(const std::string& text);

// An Open MPI hostfile: "name [slots=N] ..." per line, '#' comments; a regular file of at most kMaxHostfileBytes.
constexpr size_t kMaxHostfileBytes = size_t{1} << 20;
std::vector<Host> read_hostfile(const std::string& path);

}  // namespace ddprun::launcher
