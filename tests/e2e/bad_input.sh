#!/usr/bin/env bash
# One bad input per call: ddptrain on 2 ranks must exit non-zero with exactly one line on stderr that says what
# failed and names the flag or path, print no stack trace, and leave no rank hanging (ctest's timeout catches that).
#   bad_input.sh BIN_DIR CASE
set -uo pipefail
bin=$1
case_name=$2
work=$(mktemp -d /tmp/ddprun_bad.XXXXXX)
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
small=(--train-limit 64 --test-limit 64 --epochs 1 --threads 1 --output-dir "$work/out")
py=/usr/bin/python3

case "$case_name" in
  missing_data)   args=(--data-path "$work/nowhere"); expect="--data-path" ;;
  corrupt_data)
    mkdir "$work/data"
    for f in /usr/share/datasets/fashion-mnist/*; do ln -s "$f" "$work/data/"; done
    rm "$work/data/train-images-idx3-ubyte.gz"
    head -c 5000 /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz > "$work/data/train-images-idx3-ubyte.gz"
    args=(--data-path "$work/data"); expect="train-images-idx3-ubyte.gz' is truncated or corrupt" ;;
  unknown_model)  args=(--model resnet9000); expect="--model 'resnet9000' is not a known model" ;;
  bad_value)      args=(--lr fast); expect="--lr" ;;
  unknown_flag)   args=(--learning-rate 0.1); expect="learning-rate" ;;
  out_of_range)   args=(-b 0); expect="--batch-size 0 is out of range" ;;
  bad_config)     args=(--config "$work/none.ini"); expect="--config '$work/none.ini' cannot be opened" ;;
  resume_missing) args=(--resume "$work/none.pth"); expect="$work/none.pth" ;;
  resume_not_zip)
    echo "not a checkpoint" > "$work/notes.pth"
    args=(--resume "$work/notes.pth"); expect="$work/notes.pth" ;;
  resume_unrelated)
    $py -c "import torch; torch.save({'weights': torch.zeros(3)}, '$work/other.pth')"
    args=(--resume "$work/other.pth"); expect="--resume '$work/other.pth': is not a training checkpoint: it has no 'model' entry" ;;
  resume_other_model)
    $py -c "
import torch
m = torch.nn.Linear(4, 2)
o = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
s = torch.optim.lr_scheduler.StepLR(o, 3)
torch.save({'model': m.state_dict(), 'optimizer': o.state_dict(), 'lr_scheduler': s.state_dict(), 'epoch': 4},
           '$work/linear.pth')"
    args=(--resume "$work/linear.pth"); expect="model state does not match the model: missing conv1.weight" ;;
  output_unwritable)
    touch "$work/file"
    small=(--train-limit 64 --test-limit 64 --epochs 1 --threads 1 --output-dir "$work/file/out")
    args=(); expect="cannot create --output-dir '$work/file/out'" ;;
  *) echo "unknown case $case_name" >&2; exit 2 ;;
esac

# --quiet keeps mpirun's own "a process returned a non-zero exit code" notice out of the stderr we judge.
mpirun --quiet --oversubscribe -np 2 "$bin/ddptrain" "${small[@]}" ${args[@]+"${args[@]}"} > "$work/stdout" 2> "$work/stderr"
rc=$?
echo "exit code $rc; stderr:"; cat "$work/stderr"
[ "$rc" -ne 0 ] || { echo "FAILED: exit code 0 for a bad input"; exit 1; }
[ "$(wc -l < "$work/stderr")" -eq 1 ] || { echo "FAILED: stderr should be exactly one line"; exit 1; }
grep -q '^ddptrain: error' "$work/stderr" || { echo "FAILED: the line should start with 'ddptrain: error'"; exit 1; }
grep -qF -- "$expect" "$work/stderr" || { echo "FAILED: the line should mention: $expect"; exit 1; }
grep -qE 'terminate called|Exception raised from|frame #' "$work/stderr" "$work/stdout" &&
  { echo "FAILED: a stack trace was printed"; exit 1; }
echo "PASSED: $case_name"
