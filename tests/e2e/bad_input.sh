#!/usr/bin/env bash
# One bad input per call: ddptrain on 2 ranks must exit non-zero with exactly one line on stderr that says what
# failed and names the flag or path, print no stack trace, and leave no rank hanging (ctest's timeout catches that).
#   bad_input.sh BIN_DIR CASE
set -uo pipefail
bin=$1
case_name=$2
. "$(dirname "$0")/common.sh"
small=(--train-limit 64 --test-limit 64 --epochs 1 --threads 1 --output-dir "$work/out")
py=/usr/bin/python3

case "$case_name" in
  missing_data)   args=(--data-path "$work/nowhere"); code=3
                  expect="cannot load the data set: '$work/nowhere/train-images-idx3-ubyte[.gz]' not found; check --data-path" ;;
  corrupt_data)
    mkdir "$work/data"
    for f in /usr/share/datasets/fashion-mnist/*; do ln -s "$f" "$work/data/"; done
    rm "$work/data/train-images-idx3-ubyte.gz"
    head -c 5000 /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz > "$work/data/train-images-idx3-ubyte.gz"
    args=(--data-path "$work/data"); code=3; expect="train-images-idx3-ubyte.gz' is truncated or corrupt" ;;
  idx_overflow)  # dimensions whose product overflows 64 bits: LibTorch's message, without the file's name, before
    mkdir "$work/data"
    for f in /usr/share/datasets/fashion-mnist/*; do ln -s "$f" "$work/data/"; done
    rm "$work/data/train-images-idx3-ubyte.gz"
    printf '\x00\x00\x08\x03\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff' > "$work/data/train-images-idx3-ubyte"
    args=(--data-path "$work/data"); code=3
    expect="'$work/data/train-images-idx3-ubyte' claims more than 4 GiB of data in its header; it is not an MNIST-style file" ;;
  unknown_model)  args=(--model resnet9000); code=2; expect="--model 'resnet9000' is not a known model; choose one of: mnist_cnn, mlp, resnet18" ;;
  unknown_backend) args=(--backend gloo); code=2; expect="--backend 'gloo' is not a backend; choose auto, mpi or nccl" ;;
  bad_comm_timeout) args=(--comm-timeout -2); code=2; expect="--comm-timeout -2 is out of range: must be -1 (the default), 0 (no limit) or up to 604800 (a week)" ;;
  # No GPU here: NCCL refuses to start (or this build has none), on every rank, with what to do instead.
  nccl_without_gpu) args=(--backend nccl); code=3; expect="use --backend mpi" ;;
  bad_accum_steps) args=(--accum-steps 0); code=2; expect="--accum-steps 0 is out of range: must be at least 1" ;;
  save_steps_in_window) args=(--accum-steps 2 --save-every-steps 3); code=2; expect="--save-every-steps 3 is not a multiple of --accum-steps 2: a checkpoint cannot hold half-accumulated gradients" ;;
  bad_preempt_signal) args=(--preempt-signals USR1,KILL); code=2; expect="--preempt-signals: SIGKILL cannot be caught; use USR1 or USR2" ;;
  bad_grad_compression) args=(--grad-compression int8); code=2; expect="--grad-compression 'int8' is not known; choose none, fp16 or bf16" ;;
  bad_value)      args=(--lr fast); code=2; expect="the argument ('fast') for option '--lr' is invalid; run ddptrain --help" ;;
  unknown_flag)   args=(--learning-rate 0.1); code=2; expect="unrecognised option '--learning-rate'; run ddptrain --help" ;;
  out_of_range)   args=(-b 0); code=2; expect="--batch-size 0 is out of range: must be at least 1" ;;
  bad_config)     args=(--config "$work/none.ini"); code=2; expect="--config '$work/none.ini' cannot be opened" ;;
  # /dev/zero grew each rank to 12 GB until the OOM killer fired; a folder was silently ignored (exit 0).
  config_dev_zero) args=(--config /dev/zero); code=2
                  expect="--config '/dev/zero' is not a regular file (a device, pipe or socket); give the path of a file" ;;
  config_folder)  args=(--config "$work"); code=2; expect="--config '$work' is a folder; give the path of a file" ;;
  lr_inf)         args=(--lr inf); code=2; expect="--lr inf is out of range: must be a finite number" ;;
  label_smoothing_one) args=(--label-smoothing 1); code=2
                  expect="--label-smoothing 1 is out of range: must be in [0, 1)" ;;
  test_only_without_resume) args=(--test-only); code=2
                  expect="--test-only evaluates a checkpoint: give it with --resume PATH (or --resume auto); without one it would score an untrained model" ;;
  sync_bn_mnist)  args=(--sync-bn); code=2
                  expect="--sync-bn synchronizes BatchNorm layers, and --model mnist_cnn has none; use it with --model resnet18" ;;
  clip_negative)  args=(--clip-grad-norm -1); code=2; expect="--clip-grad-norm -1 is out of range: must be from 0 (off) to 1e30" ;;
  ema_decay_one)  args=(--model-ema --model-ema-decay 1); code=2
                  expect="--model-ema-decay 1 is out of range: must be in (0, 1)" ;;
  lr_huge)        args=(--lr 1e308); code=2; expect="--lr 1e+308 is out of range: must be positive and at most 1000" ;;
  lr_min_inf)     args=(--lr-min inf --lr-scheduler cosineannealinglr); code=2
                  expect="--lr-min inf is out of range: must be a finite number" ;;
  comm_timeout_huge) args=(--comm-timeout 1e300); code=2
                  expect="--comm-timeout 1e+300 is out of range: must be -1 (the default), 0 (no limit) or up to 604800 (a week)" ;;
  # Noticed at start (exit 3, not retried), not after the first epoch (exit 1, which --max-restarts would retry).
  # Root writes anywhere, so the folder is a read-only bind mount in a mount namespace of the test's own.
  output_readonly)
    mkdir "$work/ro"
    small=(--train-limit 64 --test-limit 64 --epochs 1 --threads 1 --output-dir "$work/ro")
    wrap=(unshare --mount sh -c 'mount --bind -o ro "$0" "$0" && exec "$@"' "$work/ro")
    args=(); code=3; expect="--output-dir '$work/ro' is not writable (Read-only file system); checkpoints go there: give a folder this user can write" ;;
  resume_missing) args=(--resume "$work/none.pth"); code=3; expect="cannot read checkpoint '$work/none.pth': No such file or directory" ;;
  resume_not_zip)
    echo "not a checkpoint" > "$work/notes.pth"
    args=(--resume "$work/notes.pth"); code=3
    expect="'$work/notes.pth' is not a PyTorch checkpoint (not a zip file written by torch.save)" ;;
  resume_unrelated)
    $py -c "import torch; torch.save({'weights': torch.zeros(3)}, '$work/other.pth')"
    args=(--resume "$work/other.pth"); code=3; expect="--resume '$work/other.pth': is not a training checkpoint: it has no 'model' entry" ;;
  resume_other_model)
    $py -c "
import torch
m = torch.nn.Linear(4, 2)
o = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
s = torch.optim.lr_scheduler.StepLR(o, 3)
torch.save({'model': m.state_dict(), 'optimizer': o.state_dict(), 'lr_scheduler': s.state_dict(), 'epoch': 4},
           '$work/linear.pth')"
    args=(--resume "$work/linear.pth"); code=3; expect="model state does not match the model: missing conv1.weight" ;;
  resume_other_optimizer)
    # A Python SGD checkpoint of the same network, resumed with --opt adamw.
    $py -c "
import sys, torch
sys.path.insert(0, '$(dirname "$0")/../../scripts/reference')
from pytorch_ddp_mnist import Net
m = Net()
o = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
s = torch.optim.lr_scheduler.StepLR(o, 3)
torch.save({'model': m.state_dict(), 'optimizer': o.state_dict(), 'lr_scheduler': s.state_dict(), 'epoch': 0},
           '$work/sgd.pth')"
    args=(--resume "$work/sgd.pth" --opt adamw); code=3
    expect="--resume '$work/sgd.pth': optimizer state is not AdamW's (its parameter group has no 'betas'); resume with the optimizer it was saved with" ;;
  output_unwritable)
    touch "$work/file"
    small=(--train-limit 64 --test-limit 64 --epochs 1 --threads 1 --output-dir "$work/file/out")
    args=(); code=3; expect="cannot create --output-dir '$work/file/out'" ;;
  # Found at start (exit 3), not when the trace is first written after the first epoch (exit 1).
  timeline_unwritable) args=(--timeline "$work/nowhere/trace-{rank}.json"); code=3
                  expect="cannot write --timeline '$work/nowhere/trace-" ;;
  ranks_disagree)
    # Two ranks started with different flags (an MPMD launch stands in for nodes with different config files).
    args=(); code=3; expect="error on rank 1: this rank's run (its flags, config file and data) differs from rank 0's: lr is 0.2 here but 0.1 on rank 0; make it the same on every rank"
    mpmd=(-np 1 "$bin/ddptrain" "${small[@]}" --lr 0.1 : -np 1 "$bin/ddptrain" "${small[@]}" --lr 0.2) ;;
  *) echo "unknown case $case_name" >&2; exit 2 ;;
esac

# --quiet keeps mpirun's own "a process returned a non-zero exit code" notice out of the stderr we judge.
if [ -n "${mpmd+set}" ]; then
  mpirun --quiet --oversubscribe "${mpmd[@]}" > "$work/stdout" 2> "$work/stderr"
else
  ${wrap[@]+"${wrap[@]}"} mpirun --quiet --oversubscribe -np 2 "$bin/ddptrain" "${small[@]}" ${args[@]+"${args[@]}"} \
    > "$work/stdout" 2> "$work/stderr"
fi
rc=$?
echo "exit code $rc; stderr:"; cat "$work/stderr"
[ "$rc" -eq "$code" ] || { echo "FAILED: exit code $rc, expected $code (1 run-time failure, 2 bad flags)"; exit 1; }
[ "$(wc -l < "$work/stderr")" -eq 1 ] || { echo "FAILED: stderr should be exactly one line"; exit 1; }
grep -q '^ddptrain: error' "$work/stderr" || { echo "FAILED: the line should start with 'ddptrain: error'"; exit 1; }
grep -qF -- "$expect" "$work/stderr" || { echo "FAILED: the line should mention: $expect"; exit 1; }
grep -qE 'terminate called|Exception raised from|frame #' "$work/stderr" "$work/stdout" &&
  { echo "FAILED: a stack trace was printed"; exit 1; }
echo "PASSED: $case_name"
