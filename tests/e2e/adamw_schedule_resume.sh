#!/usr/bin/env bash
# --opt adamw with --lr-scheduler cosineannealinglr after a linear --lr-warmup-epochs: 2 ranks train 3 epochs
# straight, and a second run resumes from the first's epoch-0 file for the other 2; the final weights are
# bit-identical, and Python loads the
# checkpoint into torchvision's AdamW and SequentialLR(LinearLR, CosineAnnealingLR) and continues from the same rate.
set -euo pipefail
bin=$1
. "$(dirname "$0")/common.sh"
common=(--model mnist_cnn -b 32 --opt adamw --lr 0.002 --wd 0.05 --lr-scheduler cosineannealinglr --lr-min 0.0001
        --lr-warmup-epochs 1 --lr-warmup-method linear --lr-warmup-decay 0.1 --train-limit 640 --test-limit 200
        --threads 1 --epochs 3)
mpirun --oversubscribe -np 2 "$bin/ddptrain" "${common[@]}" --output-dir "$work/straight" > "$work/straight.log"
mpirun --oversubscribe -np 2 "$bin/ddptrain" "${common[@]}" --output-dir "$work/split" \
  --resume "$work/straight/model_0.pth" > "$work/resumed.log"
grep -q "continuing at epoch 1 with lr 0.002$" "$work/resumed.log" ||
  fail "the resume should continue at epoch 1 with the warm-up over (lr 0.002): $(grep continuing "$work/resumed.log")"
/usr/bin/python3 - "$work" <<'PY'
import sys, warnings, torch
warnings.simplefilter("ignore")
work = sys.argv[1]
straight = torch.load(f"{work}/straight/checkpoint.pth")
split = torch.load(f"{work}/split/checkpoint.pth")
for name, tensor in straight["model"].items():
    assert torch.equal(tensor, split["model"][name]), f"{name}: the resumed run's weights differ from the straight run's"
for i, state in straight["optimizer"]["state"].items():
    for key in ("step", "exp_avg", "exp_avg_sq"):
        assert torch.equal(state[key], split["optimizer"]["state"][i][key]), f"optimizer state {i} {key} differs"
# The layout torchvision's train.py resumes from.
params = [torch.nn.Parameter(t.clone()) for t in straight["model"].values()]
opt = torch.optim.AdamW(params, lr=0.002, weight_decay=0.05)
main = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=2, eta_min=0.0001)
warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=1)
sched = torch.optim.lr_scheduler.SequentialLR(opt, schedulers=[warm, main], milestones=[1])
opt.load_state_dict(straight["optimizer"])
sched.load_state_dict(straight["lr_scheduler"])
assert opt.param_groups[0]["betas"] == (0.9, 0.999) and opt.param_groups[0]["weight_decay"] == 0.05
assert opt.state[params[0]]["step"].item() == 3 * 10, opt.state[params[0]]["step"]  # 640 / 2 ranks / 32 = 10 steps
assert sched.get_last_lr() == [opt.param_groups[0]["lr"]] and abs(sched.get_last_lr()[0] - 0.0001) < 1e-12, \
    sched.get_last_lr()
for p in params:
    p.grad = torch.ones_like(p)
opt.step()
sched.step()
print("PASSED: AdamW + warm-up + cosine resume bit-identical; Python continues from lr", sched.get_last_lr()[0])
PY
