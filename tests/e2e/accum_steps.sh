#!/usr/bin/env bash
# --accum-steps: two backward passes of 16 images per optimizer step train the same weights as one of 32 (mlp: no
# dropout, so only float rounding differs), on 2 ranks through the DDP engine's no_sync and through --grad-sync
# per-param; and --grad-compression bf16 and --find-unused-parameters run.
set -euo pipefail
bin=$1
. "$(dirname "$0")/common.sh"
common=(--model mlp --epochs 1 --train-limit 512 --test-limit 64 --threads 1 --lr 0.05)
mpirun --oversubscribe -np 2 "$bin/ddptrain" "${common[@]}" -b 32 --output-dir "$work/whole" > /dev/null
mpirun --oversubscribe -np 2 "$bin/ddptrain" "${common[@]}" -b 16 --accum-steps 2 --output-dir "$work/accum" > /dev/null
mpirun --oversubscribe -np 2 "$bin/ddptrain" "${common[@]}" -b 16 --accum-steps 2 --grad-sync per-param \
  --output-dir "$work/per_param" > /dev/null
mpirun --oversubscribe -np 2 "$bin/ddptrain" "${common[@]}" -b 32 --grad-compression bf16 --find-unused-parameters \
  --output-dir "$work/bf16" > /dev/null
/usr/bin/python3 - "$work" <<'PY'
import sys, torch
work = sys.argv[1]
whole = torch.load(f"{work}/whole/checkpoint.pth")["model"]
accum = torch.load(f"{work}/accum/checkpoint.pth")["model"]
per_param = torch.load(f"{work}/per_param/checkpoint.pth")["model"]
bf16 = torch.load(f"{work}/bf16/checkpoint.pth")["model"]
start = None
for name in whole:
    difference = (whole[name] - accum[name]).abs().max().item()
    assert difference < 1e-5, f"{name}: --accum-steps 2 x 16 differs from batch 32 by {difference}"
    difference = (whole[name] - per_param[name]).abs().max().item()
    assert difference < 1e-5, f"{name}: --grad-sync per-param with --accum-steps 2 x 16 differs by {difference}"
    relative = ((whole[name] - bf16[name]).norm() / whole[name].norm()).item()
    assert relative < 1e-2, f"{name}: bf16 gradients moved the weights by {relative} (relative)"
print("PASSED: accumulated weights (DDP and per-param) equal the large batch's; bf16 within 1%")
PY
