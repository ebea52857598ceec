# PyTorch's own CPU all-reduce (torch.distributed, gloo backend) on the sizes allreduce_bench measures, the same way:
# float32 sum in place, `iters` collectives issued back to back (async_op=True), timed until the last completes, the
# slowest rank's time. Started by mpirun (rank and size from Open MPI's environment), run with /usr/bin/python3.
#   mpirun -np N /usr/bin/python3 bench/allreduce_gloo.py --store FILE [--min-bytes B] [--max-bytes B] [--repeats R]
import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True, help="a file path for the rendezvous (FileStore)")
    parser.add_argument("--min-bytes", type=int, default=4 << 10)
    parser.add_argument("--max-bytes", type=int, default=256 << 20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.1)
    args = parser.parse_args()
    rank = int(os.environ["OMPI_COMM_WORLD_RANK"])
    size = int(os.environ["OMPI_COMM_WORLD_SIZE"])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="file://" + args.store, rank=rank, world_size=size)
    bus_factor = 2.0 * (size - 1) / size if size > 1 else 1.0
    slowest = torch.zeros(1, dtype=torch.float64)

    def measure(buffer, iters):
        dist.barrier()
        start = time.perf_counter()
        works = [dist.all_reduce(buffer, async_op=True) for _ in range(iters)]
        for work in works:
            work.wait()
        slowest[0] = time.perf_counter() - start
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        return slowest.item() / iters

    nbytes = args.min_bytes
    while nbytes <= args.max_bytes:
        buffer = torch.ones(nbytes // 4, dtype=torch.float32)
        measure(buffer, 2)
        iters = int(min(max(args.seconds / max(measure(buffer, 1), 1e-7), 3), 2000))
        times = []
        for _ in range(args.repeats):
            buffer.fill_(1)
            times.append(measure(buffer, iters))
        if rank == 0:
            t = statistics.median(times)
            algbw = nbytes / t / 1e9
            print("%12d %8s %7d %11.1f %11.3f %11.3f %8.3f-%-8.3f" % (
                nbytes, "gloo", iters, t * 1e6, algbw, algbw * bus_factor,
                nbytes / max(times) / 1e9 * bus_factor, nbytes / min(times) / 1e9 * bus_factor), flush=True)
            print("RESULT gloo %d %d %.4f %.4f %.4f" % (
                size, nbytes, algbw * bus_factor, nbytes / max(times) / 1e9 * bus_factor,
                nbytes / min(times) / 1e9 * bus_factor), flush=True)
        nbytes *= 2
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
