// allreduce_bench: all-reduce bus bandwidth of ddprun's communicator against a raw MPI_Allreduce loop on the same
// buffers, size by size, the two measured alternately; prints nccl-tests style rows and one summary line per
// implementation and size for scripts/bench/allreduce.sh.
//
//   mpirun -np N allreduce_bench [--min-bytes B] [--max-bytes B] [--repeats R] [--seconds S] [--only ddprun|mpi]
//
// Method (as nccl-tests): float32 sum in place; per measurement, `iters` collectives are issued back to back and the
// time is taken when the last completes (ddprun: issued asynchronously, then the last is waited for; MPI: a loop of
// blocking calls), the slowest rank's time counts. algbw = bytes / time, busbw = algbw * 2 (n - 1) / n.
// The two are measured alternately, repeat by repeat; besides each one's median, the median of the per-repeat ratios
// ddprun/MPI is printed (PAIRED lines), which the machine's slow drifts affect least. Both run in one process set
// up as ddprun sets up a training program's (the communicator starts MPI).
#include "comm/communicator.h"

#include <ATen/ops/ones.h>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

using ddprun::comm::Communicator;

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

double slowest(double seconds) {
  double result = 0;
  MPI_Allreduce(&seconds, &result, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return result;
}

// Seconds per collective over `iters` collectives.
double time_mpi(at::Tensor& buffer, int iters) {
  MPI_Barrier(MPI_COMM_WORLD);
  const double start = now();
  for (int i = 0; i < iters; ++i)
    MPI_Allreduce(MPI_IN_PLACE, buffer.data_ptr(), static_cast<int>(buffer.numel()), MPI_FLOAT, MPI_SUM,
                  MPI_COMM_WORLD);
  return slowest(now() - start) / iters;
}

double time_ddprun(Communicator& comm, at::Tensor& buffer, int iters) {
  MPI_Barrier(MPI_COMM_WORLD);
  const double start = now();
  ddprun::comm::WorkHandle last;
  for (int i = 0; i < iters; ++i) last = comm.allreduce(buffer, ddprun::comm::ReduceOp::Sum);
  last->wait();
  return slowest(now() - start) / iters;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

int64_t parse_bytes(const char* text) {
  char* end = nullptr;
  double value = std::strtod(text, &end);
  const std::string unit = end;
  if (unit == "K" || unit == "KiB") value *= 1024;
  if (unit == "M" || unit == "MiB") value *= 1024 * 1024;
  if (unit == "G" || unit == "GiB") value *= 1024.0 * 1024 * 1024;
  return static_cast<int64_t>(value);
}

}  // namespace

int main(int argc, char** argv) {
  int64_t min_bytes = 4 << 10, max_bytes = int64_t{256} << 20;
  int repeats = 5;
  double seconds = 0.1;  // aimed length of one measurement
  std::string only;  // "ddprun" or "mpi": measure one implementation alone (to see how much they disturb each other)
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--min-bytes") {
      min_bytes = parse_bytes(argv[i + 1]);
    } else if (flag == "--max-bytes") {
      max_bytes = parse_bytes(argv[i + 1]);
    } else if (flag == "--repeats") {
      repeats = std::max(1, std::atoi(argv[i + 1]));
    } else if (flag == "--only") {
      only = argv[i + 1];
    } else if (flag == "--seconds") {
      seconds = std::atof(argv[i + 1]);
    } else {
      std::fprintf(stderr, "allreduce_bench: unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  // (0 bytes would double forever; a buffer holds whole floats)
  if (min_bytes < 4 || min_bytes % 4 != 0 || max_bytes < min_bytes || max_bytes > (int64_t{1} << 40) ||
      !(seconds > 0 && seconds <= 3600) || (!only.empty() && only != "ddprun" && only != "mpi")) {
    std::fprintf(stderr,
                 "allreduce_bench: --min-bytes must be a positive multiple of 4 and at most --max-bytes (1 TiB at "
                 "most), --seconds in (0, 3600], --only ddprun or mpi\n");
    return 2;
  }
  {
    // The communicator starts MPI, as in a training program (with the settings it chooses: see
    // comm/mpi_communicator.cpp); the raw loop then runs on MPI_COMM_WORLD with Open MPI's own algorithm choice.
    auto comm = ddprun::comm::make_mpi_communicator(ddprun::comm::comm_options_from_env());
    const int n = comm->size();
    const double bus_factor = n > 1 ? 2.0 * (n - 1) / n : 1.0;
    if (comm->rank() == 0) {
      std::printf("# allreduce_bench: %d ranks, float32 sum in place, %d alternating repeats per size\n", n, repeats);
      std::printf("# ddprun communicator: %s\n", comm->backend_name().c_str());
      std::printf("#%11s %8s %7s %11s %11s %11s %17s\n", "size(B)", "impl", "iters", "time(us)", "algbw(GB/s)",
                  "busbw(GB/s)", "busbw min-max");
    }
    for (int64_t bytes = min_bytes; bytes <= max_bytes; bytes *= 2) {
      at::Tensor buffer = at::ones({bytes / 4}, at::kFloat);
      // Warm up both paths (first touch, connections), then size `iters` to about `seconds` per measurement.
      time_mpi(buffer, 2);
      time_ddprun(*comm, buffer, 2);
      const double one = std::max(std::min(time_mpi(buffer, 1), time_ddprun(*comm, buffer, 1)), 1e-7);
      const int iters = static_cast<int>(std::clamp(seconds / one, 3.0, 2000.0));
      std::vector<double> mpi_times, ddprun_times;
      for (int r = 0; r < repeats; ++r) {
        buffer.fill_(1);
        if (!only.empty()) {
          (only == "mpi" ? mpi_times : ddprun_times)
              .push_back(only == "mpi" ? time_mpi(buffer, iters) : time_ddprun(*comm, buffer, iters));
        } else if (r % 2 == 0) {
          mpi_times.push_back(time_mpi(buffer, iters));
          ddprun_times.push_back(time_ddprun(*comm, buffer, iters));
        } else {
          ddprun_times.push_back(time_ddprun(*comm, buffer, iters));
          mpi_times.push_back(time_mpi(buffer, iters));
        }
      }
      if (comm->rank() != 0) continue;
      for (const auto& [impl, times] : {std::pair<const char*, std::vector<double>&>{"ddprun", ddprun_times},
                                        std::pair<const char*, std::vector<double>&>{"mpi", mpi_times}}) {
        if (times.empty()) continue;
        const double t = median(times);
        const double algbw = bytes / t / 1e9;
        const double worst = bytes / *std::max_element(times.begin(), times.end()) / 1e9 * bus_factor;
        const double best = bytes / *std::min_element(times.begin(), times.end()) / 1e9 * bus_factor;
        std::printf("%12lld %8s %7d %11.1f %11.3f %11.3f %8.3f-%-8.3f\n", static_cast<long long>(bytes), impl, iters,
                    t * 1e6, algbw, algbw * bus_factor, worst, best);
        std::printf("RESULT %s %d %lld %.4f %.4f %.4f\n", impl, n, static_cast<long long>(bytes), algbw * bus_factor,
                    worst, best);
      }
      if (!only.empty()) continue;
      // Each repeat measured both back to back: the median of the per-repeat ratios is robust to the machine's drift.
      std::vector<double> ratios;
      for (int r = 0; r < repeats; ++r) ratios.push_back(mpi_times[r] / ddprun_times[r]);
      std::printf("PAIRED %d %lld %.4f %.4f %.4f\n", n, static_cast<long long>(bytes), median(ratios),
                  *std::min_element(ratios.begin(), ratios.end()), *std::max_element(ratios.begin(), ratios.end()));
      std::fflush(stdout);
    }
  }  // the communicator finalizes MPI
  return 0;
}
