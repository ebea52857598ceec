#!/usr/bin/env bash
# The examples as a user meets them (examples/): the installed package, the examples built as a project of their own
# with find_package(ddprun), then run. mnist/train.cpp trains on one process; mnist/train_ddp.cpp, the same program
# with ddprun (its diff, shown in docs/library.md, is checked to be the current one and at most 25 changed lines), trains
# on 2 ranks once without interruption and once preempted in epoch 1 with SIGUSR1 and resumed: the same weights,
# optimizer state and epoch, bit for bit. gan/train.cpp (two models, two optimizers in one checkpoint) likewise, and
# Python loads every part of its checkpoint into torch.nn and torch.optim.Adam.
#   run.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$(cd "$1" && pwd)
source_dir=$(cd "$2" && pwd)
. "$source_dir/tests/e2e/common.sh"
export OMP_NUM_THREADS=1
examples=$source_dir/examples

# The diff a reader sees in docs/library.md is the diff of the two files.
diff -u --label train.cpp --label train_ddp.cpp "$examples/mnist/train.cpp" "$examples/mnist/train_ddp.cpp" \
  > "$work/ddp.diff" || true
changed=$(grep -c '^[-+][^-+]' "$work/ddp.diff" || true)
[ "$changed" -le 25 ] || fail "train_ddp.cpp differs from train.cpp in $changed lines, more than 25"
/usr/bin/python3 - "$source_dir/docs/library.md" "$work/ddp.diff" <<'PY' || fail "docs/library.md does not show the current diff of examples/mnist"
import sys
doc, diff = open(sys.argv[1]).read(), open(sys.argv[2]).read()
marker = "<!-- diff -u examples/mnist/train.cpp examples/mnist/train_ddp.cpp -->\n```diff\n"
start = doc.index(marker) + len(marker)
sys.exit(0 if doc[start:doc.index("```\n", start)] == diff else 1)
PY

cmake --install "$build" --prefix "$work/prefix" > "$work/install.log" || fail "cmake --install failed: $(cat "$work/install.log")"
cmake -S "$examples" -B "$work/build" -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_BUILD_TYPE=Release > "$work/configure.log" 2>&1 ||
  fail "the examples do not configure: $(cat "$work/configure.log")"
cmake --build "$work/build" > "$work/build.log" 2>&1 || fail "the examples do not build: $(cat "$work/build.log")"
ddprun=$work/prefix/bin/ddprun

# LibTorch's MNIST reader takes the uncompressed IDX files.
data=${DDPRUN_DATA:-/usr/share/datasets/fashion-mnist}
mkdir -p "$work/data"
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  [ -f "$data/$f.gz" ] || fail "no $data/$f.gz (scripts/install-deps.sh installs dataset-fashion-mnist)"
  gunzip -c "$data/$f.gz" > "$work/data/$f"
done

mkdir -p "$work/single"
"$work/build/train" "$work/data" "$work/single" > "$work/single.out" 2>&1 || fail "train (one process) failed: $(cat "$work/single.out")"
grep -q "^epoch 1 loss" "$work/single.out" || fail "train did not train 2 epochs: $(cat "$work/single.out")"
echo "train (one process): $(tail -1 "$work/single.out")"

"$ddprun" --np 2 -- "$work/build/train_ddp" "$work/data" "$work/ref" > "$work/ref.out" 2>&1 ||
  fail "train_ddp, uninterrupted, failed: $(cat "$work/ref.out")"
grep -q "^epoch 1 loss" "$work/ref.out" || fail "train_ddp did not train 2 epochs: $(cat "$work/ref.out")"
"$ddprun" --np 2 -- "$work/build/train_ddp" "$work/data" "$work/pre" > "$work/pre.out" 2>&1 &
pid=$!
wait_for_file "$work/pre/model_0.pth" "checkpoint of epoch 0" 180
kill -USR1 "$pid"
code=0
wait "$pid" || code=$?
[ "$code" -eq 75 ] || fail "train_ddp: exit code $code after SIGUSR1, expected 75: $(cat "$work/pre.out")"
"$ddprun" --np 2 -- "$work/build/train_ddp" "$work/data" "$work/pre" > "$work/resume.out" 2>&1 ||
  fail "train_ddp: the resume failed: $(cat "$work/resume.out")"
where=$(grep -o "continuing at epoch 1, step [0-9]*" "$work/resume.out") ||
  fail "train_ddp did not resume inside epoch 1: $(cat "$work/resume.out")"
/usr/bin/python3 "$source_dir/tests/e2e/same_state.py" "$work/ref/checkpoint.pth" "$work/pre/checkpoint.pth" model optimizer epoch ||
  fail "train_ddp: preempted and resumed is not bit-identical to the uninterrupted run"
echo "train_ddp: preempted, resumed ($where), bit-identical to the uninterrupted run"

# The GAN: SIGUSR1 at once (ddprun holds it until the ranks are ready), so the run stops a few steps into epoch 0.
"$ddprun" --np 2 -- "$work/build/train_gan" "$work/gan_ref" > "$work/gan_ref.out" 2>&1 ||
  fail "train_gan, uninterrupted, failed: $(cat "$work/gan_ref.out")"
grep -q "^epoch 3 loss_d" "$work/gan_ref.out" || fail "train_gan did not train 4 epochs: $(cat "$work/gan_ref.out")"
"$ddprun" --np 2 -- "$work/build/train_gan" "$work/gan" > "$work/gan.out" 2>&1 &
pid=$!
sleep 0.5
kill -USR1 "$pid"
code=0
wait "$pid" || code=$?
[ "$code" -eq 75 ] || fail "train_gan: exit code $code after SIGUSR1, expected 75: $(cat "$work/gan.out")"
gan_where=$(grep -o "^preempted after epoch [0-9]* step [0-9]*" "$work/gan.out") || fail "train_gan did not say where it stopped"
"$ddprun" --np 2 -- "$work/build/train_gan" "$work/gan" > "$work/gan_resume.out" 2>&1 ||
  fail "train_gan: the resume failed: $(cat "$work/gan_resume.out")"
/usr/bin/python3 "$source_dir/tests/e2e/same_state.py" "$work/gan_ref/checkpoint.pth" "$work/gan/checkpoint.pth" \
  model optimizer discriminator optimizer_d epoch || fail "train_gan: preempted and resumed is not bit-identical"
source_dir=$source_dir /usr/bin/python3 - "$work/gan/checkpoint.pth" <<'PY' || fail "Python cannot load the GAN's checkpoint into its objects"
import os, sys, torch
sys.path.insert(0, os.path.join(os.environ["source_dir"], "tests", "checkpoint"))
from interop import audit  # PyTorch 2.x's weights_only allow-list (1.13's own loader refuses floats)
audit(sys.argv[1])
ckpt = torch.load(sys.argv[1])
def mlp(i, o):
    return torch.nn.Sequential(torch.nn.Linear(i, 64), torch.nn.LeakyReLU(0.2), torch.nn.Linear(64, 64),
                               torch.nn.LeakyReLU(0.2), torch.nn.Linear(64, o))
g, d = mlp(8, 2), mlp(2, 1)
g.load_state_dict(ckpt["model"])
d.load_state_dict(ckpt["discriminator"])
opt_g = torch.optim.Adam(g.parameters(), lr=1e-3, betas=(0.5, 0.999))
opt_d = torch.optim.Adam(d.parameters(), lr=1e-3, betas=(0.5, 0.999))
opt_g.load_state_dict(ckpt["optimizer"])
opt_d.load_state_dict(ckpt["optimizer_d"])
assert ckpt["epoch"] == 3 and ckpt["args"]["noise"] == 8, (ckpt["epoch"], ckpt["args"])
assert "lr_scheduler" in ckpt, "no lr_scheduler key (torchvision-style loaders read it)"
loss = torch.nn.functional.binary_cross_entropy_with_logits(d(g(torch.randn(4, 8))), torch.ones(4, 1))
loss.backward()
opt_g.step()
opt_d.step()
print("Python: generator, discriminator and both Adam optimizers loaded (weights_only allow-list) and stepped")
PY
echo "PASSED: examples built against the installed package; train_ddp and train_gan preempted ($gan_where) and resumed bit-identically"
