"""What Python's PyTorch computes, for the trainer tests to compare against (run with /usr/bin/python3).

  sampler N WORLD SEED EPOCH   -> one line per rank: DistributedSampler(shuffle=True) indices
  steplr LR STEP GAMMA EPOCHS  -> the learning rate of each epoch under StepLR
  resnet18_export DIR          -> writes DIR/torchvision_resnet18.pth (torchvision's resnet18, 10 classes, BatchNorm
                                  statistics from one training batch) and prints its eval log_softmax of a fixed input
  resnet18_import PATH REF     -> 1 if PATH loads into torchvision's resnet18 strictly and equals REF, key order too
"""
import sys

import torch
from torch.utils.data import DistributedSampler


def main(argv):
    mode = argv[1]
    if mode == "sampler":
        n, world, seed, epoch = (int(a) for a in argv[2:6])
        for rank in range(world):
            sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed)
            sampler.set_epoch(epoch)
            print(" ".join(str(i) for i in sampler))
    elif mode == "steplr":
        lr, step, gamma, epochs = float(argv[2]), int(argv[3]), float(argv[4]), int(argv[5])
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=step, gamma=gamma)
        rates = []
        for _ in range(epochs):
            rates.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        print(" ".join(repr(r) for r in rates))
    elif mode == "resnet18_export":
        import torchvision
        torch.manual_seed(0)
        model = torchvision.models.resnet18(num_classes=10)
        with torch.no_grad():
            model(torch.randn(4, 3, 28, 28))  # running statistics and num_batches_tracked move off their defaults
        model.eval()
        torch.save(model.state_dict(), argv[2] + "/torchvision_resnet18.pth")
        x = torch.linspace(-1, 1, 2 * 3 * 28 * 28).view(2, 3, 28, 28)
        with torch.no_grad():
            print(" ".join(repr(v) for v in torch.log_softmax(model(x), 1).flatten().tolist()))
    elif mode == "resnet18_import":
        import torchvision
        model = torchvision.models.resnet18(num_classes=10)
        ours = torch.load(argv[2])
        model.load_state_dict(ours, strict=True)
        reference = torch.load(argv[3])
        same = list(ours.keys()) == list(reference.keys()) and all(
            torch.equal(ours[k], reference[k]) for k in reference)
        print("1" if same else "0")
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv)
