// Slurm's compressed lists, expanded: host lists ("gpu[01-03,07],login1") and task counts per node ("2(x3),1"), as
// SLURM_JOB_NODELIST and SLURM_TASKS_PER_NODE give them.
#pragma once

#include <string>
#include <vector>

namespace ddprun::launcher {

// "gpu[01-03,07],login1" -> gpu01 gpu02 gpu03 gpu07 login1 (zero padding kept; several bracket groups in one name
// multiply out). Throws std::invalid_argument naming what it cannot read.
std::vector<std::string> expand_hostlist(const std::string& list);

// "2(x3),1" -> 2 2 2 1. Throws std::invalid_argument naming what it cannot read.
std::vector<int> expand_tasks_per_node(const std::string& counts);

}  // namespace ddprun::launcher
