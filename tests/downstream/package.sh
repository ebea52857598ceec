#!/usr/bin/env bash
# The installed package as a user's project sees it: cmake --install puts ddprun under a fresh prefix, this folder's
# project (train.cpp, its own network; the README's "Use it in your code" example, word for word) is configured with
# find_package(ddprun) against it and built, then run on 2 ranks by the installed ddprun: once without interruption,
# once preempted with SIGUSR1 to ddprun (exit 75) and resumed. Both end with the same weights, optimizer state and
# schedule, bit for bit; Python loads the checkpoint into torch.nn, torch.optim.SGD and StepLR, and the program
# resumes a checkpoint Python's torch.save wrote.
#   package.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$(cd "$1" && pwd)
source_dir=$(cd "$2" && pwd)
. "$source_dir/tests/e2e/common.sh"
here=$source_dir/tests/downstream
export OMP_NUM_THREADS=1  # one intra-op thread per rank (ddprun passes it on): 2 ranks on a 2-core machine

/usr/bin/python3 - "$source_dir/README.md" "$here/train.cpp" <<'PY' || fail "README's example is not tests/downstream/train.cpp"
import sys
readme, source = open(sys.argv[1]).read(), open(sys.argv[2]).read()
start = readme.index("<!-- tests/downstream/train.cpp -->\n```cpp\n") + len("<!-- tests/downstream/train.cpp -->\n```cpp\n")
sys.exit(0 if readme[start:readme.index("```\n", start)] == source else 1)
PY
[ "$(wc -l < "$here/train.cpp")" -lt 100 ] || fail "the example has grown to 100 lines or more"

cmake --install "$build" --prefix "$work/prefix" > "$work/install.log" || fail "cmake --install failed: $(cat "$work/install.log")"
for f in bin/ddprun bin/ddptrain include/ddprun/ddprun.h lib/cmake/ddprun/ddprunConfig.cmake \
         share/ddprun/slurm/single-node.sbatch share/ddprun/slurm/multi-node.sbatch share/ddprun/plot_metrics.py; do
  [ -e "$work/prefix/$f" ] || fail "cmake --install did not install $f"
done
ls "$work/prefix"/lib/libddprun.so* > /dev/null || fail "no libddprun.so installed"
cmake -S "$here" -B "$work/build" -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_BUILD_TYPE=Release > "$work/configure.log" 2>&1 ||
  fail "the downstream project does not configure: $(cat "$work/configure.log")"
cmake --build "$work/build" > "$work/build.log" 2>&1 || fail "the downstream project does not build: $(cat "$work/build.log")"
ddprun=$work/prefix/bin/ddprun

"$ddprun" --np 2 -- "$work/build/train" "$work/ref" > "$work/ref.out" 2>&1 || fail "the uninterrupted run failed: $(cat "$work/ref.out")"
grep -q "^epoch 2 loss" "$work/ref.out" || fail "the uninterrupted run did not train 3 epochs: $(cat "$work/ref.out")"

"$ddprun" --np 2 -- "$work/build/train" "$work/pre" > "$work/pre.out" 2>&1 &
pid=$!
wait_for_file "$work/pre/model_0.pth" "checkpoint of epoch 0" 120
kill -USR1 "$pid"
code=0
wait "$pid" || code=$?
[ "$code" -eq 75 ] || fail "exit code $code after SIGUSR1, expected 75: $(cat "$work/pre.out")"
where=$(sed -n 's/^preempted after epoch \([0-9]*\) step \([0-9]*\)$/\1, step \2/p' "$work/pre.out")
[ -n "$where" ] || fail "the run did not say where it stopped: $(cat "$work/pre.out")"
"$ddprun" --np 2 -- "$work/build/train" "$work/pre" > "$work/resume.out" 2>&1 || fail "the resume failed: $(cat "$work/resume.out")"
grep -q "^ddprun: resumed from $work/pre/checkpoint.pth: continuing at epoch $where with lr " "$work/resume.out" ||
  fail "the resume did not continue at epoch $where: $(cat "$work/resume.out")"
/usr/bin/python3 "$source_dir/tests/e2e/same_state.py" "$work/ref/checkpoint.pth" "$work/pre/checkpoint.pth" ||
  fail "preempted and resumed: not bit-identical to the uninterrupted run"

/usr/bin/python3 - "$work/pre/checkpoint.pth" <<'PY' || fail "Python cannot load the checkpoint into its objects"
import sys, torch
ckpt = torch.load(sys.argv[1])
net = torch.nn.Sequential()
net.fc1, net.dropout, net.fc2 = torch.nn.Linear(32, 256), torch.nn.Dropout(0.2), torch.nn.Linear(256, 2)
net.load_state_dict(ckpt["model"])
opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
opt.load_state_dict(ckpt["optimizer"])
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
sched.load_state_dict(ckpt["lr_scheduler"])
assert ckpt["epoch"] == 2 and sched.last_epoch == 3 and abs(opt.param_groups[0]["lr"] - 0.005) < 1e-12, ckpt["epoch"]
net(torch.randn(4, 32)).sum().backward()
opt.step()
print("Python: model, SGD and StepLR loaded, lr", opt.param_groups[0]["lr"])
PY

# The other way: a checkpoint Python's torch.save wrote after one epoch, resumed by the C++ program.
mkdir -p "$work/py"
/usr/bin/python3 - "$work/py/checkpoint.pth" <<'PY' || fail "Python could not write a checkpoint"
import sys, torch
net = torch.nn.Sequential()
net.fc1, net.dropout, net.fc2 = torch.nn.Linear(32, 256), torch.nn.Dropout(0.2), torch.nn.Linear(256, 2)
opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
net(torch.randn(8, 32)).sum().backward()
opt.step()
sched.step()
torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict(),
            "epoch": 0}, sys.argv[1])
PY
"$ddprun" --np 2 -- "$work/build/train" "$work/py" > "$work/py.out" 2>&1 || fail "resuming Python's checkpoint failed: $(cat "$work/py.out")"
grep -q "^ddprun: resumed from $work/py/checkpoint.pth: continuing at epoch 1 with lr 0.05 (the file holds no random states" \
  "$work/py.out" || fail "Python's checkpoint was not resumed at epoch 1: $(cat "$work/py.out")"
grep -q "^epoch 2 loss" "$work/py.out" || fail "the run from Python's checkpoint did not finish: $(cat "$work/py.out")"
echo "PASSED: installed, built against with find_package(ddprun), preempted at epoch $where, resumed bit-identically; Python and C++ resume each other's checkpoints"
