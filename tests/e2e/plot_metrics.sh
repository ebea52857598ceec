#!/usr/bin/env bash
# scripts/plot_metrics.py draws PNGs: the metrics of two runs (one resumed, marked) and a benchmark's JSON lines as
# bars; a folder without metrics.jsonl and lines without the value are refused with one line.
set -euo pipefail
. "$(dirname "$0")/common.sh"
plot="/usr/bin/python3 $(dirname "$0")/../../scripts/plot_metrics.py"
mkdir -p "$work/a" "$work/b" "$work/empty"
for e in 0 1 2; do
  echo "{\"epoch\": $e, \"train_loss\": 0.$((9 - e)), \"test_acc1\": $((80 + e)), \"images_per_sec\": 1000, \"lr\": 0.05, \"world_size\": 2, \"resumed\": $([ $e = 2 ] && echo true || echo false)}" >> "$work/a/metrics.jsonl"
  echo "{\"epoch\": $e, \"train_loss\": 0.$((8 - e)), \"test_acc1\": $((81 + e)), \"images_per_sec\": 900, \"lr\": 0.1}" >> "$work/b/metrics.jsonl"
done
printf '%s\n' 'a line of text before the JSON' \
  '{"impl": "ddprun", "model": "mlp", "ranks": 2, "images_per_sec": 740.0, "test_acc1": 79.1}' \
  '{"impl": "pytorch-ddp", "model": "mlp", "ranks": 2, "images_per_sec": 284.0, "test_acc1": 79.1}' \
  '{"impl": "ddprun", "model": "mnist_cnn", "ranks": 2, "images_per_sec": 1988.0, "test_acc1": 88.0}' > "$work/bench.jsonl"
is_png() { [ "$(head -c 8 "$1" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] && [ "$(stat -c %s "$1")" -gt 10000 ]; }
$plot "$work/a" "$work/b" -o "$work/runs.png" > /dev/null && is_png "$work/runs.png" || fail "no PNG of the runs"
$plot --bench "$work/bench.jsonl" -o "$work/bench.png" > /dev/null && is_png "$work/bench.png" || fail "no PNG of the benchmark"
if $plot "$work/empty" -o "$work/x.png" 2> "$work/err"; then fail "a folder without metrics.jsonl was accepted"; fi
grep -q "has no metrics.jsonl; give the --output-dir of a ddptrain run" "$work/err" || fail "unclear error: $(cat "$work/err")"
if $plot --bench "$work/bench.jsonl" --value GBps -o "$work/x.png" 2> "$work/err"; then fail "a missing --value was accepted"; fi
grep -q "the lines need 'impl' and 'GBps'" "$work/err" || fail "unclear error: $(cat "$work/err")"
echo "PASSED: runs and benchmark bars drawn; bad input refused with one line"
