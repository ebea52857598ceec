#!/usr/bin/python3
"""Plots of ddprun runs and benchmarks, as PNG files (Debian's python3-matplotlib).

  plot_metrics.py RUN_DIR... -o FILE.png
      each RUN_DIR's metrics.jsonl (what ddptrain writes, one object per epoch): train loss, test accuracy, images/s
      and learning rate against the epoch, one line per run; an epoch that a resumed run (a restart, a requeue)
      trained first is marked with a dashed line.
  plot_metrics.py --bench FILE.jsonl... -o FILE.png [--value KEY]
      the JSON lines a benchmark prints (scripts/bench/*.sh): one bar per implementation ("impl") in each group of
      the other keys (model, size, state and operation), the height VALUE (default: images_per_sec, busbw_GBps or
      GBps, whichever the lines have).
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

PANELS = [("train_loss", "train loss"), ("test_acc1", "test accuracy (%)"), ("images_per_sec", "images/s"),
          ("lr", "learning rate")]
VALUES = ["images_per_sec", "busbw_GBps", "GBps"]
NOT_GROUPS = {"impl", "busbw_min", "busbw_max", "test_acc1", "peak_extra_bytes", "stall_s", "ranks"}


def read_lines(path):
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                sys.exit("plot_metrics.py: %s line %d is not JSON: %s" % (path, number, e))
    return rows


def plot_runs(run_dirs, output):
    runs = []
    for run in run_dirs:
        path = os.path.join(run, "metrics.jsonl") if os.path.isdir(run) else run
        if not os.path.exists(path):
            sys.exit("plot_metrics.py: %s has no metrics.jsonl; give the --output-dir of a ddptrain run" % run)
        rows = read_lines(path)
        if not rows:
            sys.exit("plot_metrics.py: %s holds no epoch" % path)
        runs.append((os.path.basename(os.path.normpath(run)), rows))
    figure, axes = plt.subplots(2, 2, figsize=(10, 7))
    for (key, title), ax in zip(PANELS, axes.flat):
        for name, rows in runs:
            epochs = [r["epoch"] for r in rows if key in r]
            line, = ax.plot(epochs, [r[key] for r in rows if key in r], marker="o", label=name)
            for r in rows:
                if r.get("resumed"):
                    ax.axvline(r["epoch"] - 0.5, color=line.get_color(), linestyle="--", linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if any(r.get("resumed") for _, rows in runs for r in rows):
        axes.flat[0].plot([], [], color="gray", linestyle="--", label="resumed (restart or requeue)")
    axes.flat[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(output, dpi=100)


def plot_bench(files, output, value):
    rows = [r for path in files for r in read_lines(path)]
    if not rows:
        sys.exit("plot_metrics.py: no JSON lines in %s" % ", ".join(files))
    value = value or next((v for v in VALUES if v in rows[0]), None)
    if value is None or any(value not in r or "impl" not in r for r in rows):
        sys.exit("plot_metrics.py: the lines need 'impl' and '%s' (choose with --value)" % value)

    def group(r):
        return ", ".join("%s %s" % (k, r[k]) for k in sorted(r) if k not in NOT_GROUPS and k != value)

    groups = list(dict.fromkeys(group(r) for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    width = 0.8 / len(impls)
    figure, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups) * len(impls) / 2 + 3), 4.5))
    for i, impl in enumerate(impls):
        heights = [next((r[value] for r in rows if r["impl"] == impl and group(r) == g), 0) for g in groups]
        ax.bar([x + i * width for x in range(len(groups))], heights, width, label=impl)
    ax.set_xticks([x + width * (len(impls) - 1) / 2 for x in range(len(groups))])
    ax.set_xticklabels(groups, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(value)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(output, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", help="ddptrain --output-dir folders (or metrics.jsonl files)")
    parser.add_argument("--bench", nargs="+", metavar="FILE", help="files of a benchmark's JSON lines")
    parser.add_argument("--value", help="with --bench: the key to plot")
    parser.add_argument("-o", "--output", required=True, help="the PNG to write")
    args = parser.parse_args()
    if bool(args.runs) == bool(args.bench):
        parser.error("give run folders or --bench files (one of them)")
    if args.bench:
        plot_bench(args.bench, args.output, args.value)
    else:
        plot_runs(args.runs, args.output)
    print("plot_metrics.py: wrote %s" % args.output)


if __name__ == "__main__":
    main()
