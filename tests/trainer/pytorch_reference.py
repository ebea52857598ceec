"""What Python's PyTorch computes, for the trainer tests to compare against (run with /usr/bin/python3).

  sampler N WORLD SEED EPOCH   -> one line per rank: DistributedSampler(shuffle=True) indices
  steplr LR STEP GAMMA EPOCHS  -> the learning rate of each epoch under StepLR
  optim OPT SCHED WARMUP_EPOCHS WARMUP_METHOD EPOCHS SAVE_AFTER DIR
                               -> torchvision's optimizer and schedule (lr 0.1, momentum 0.9, wd 1e-4, step 2,
                                  gamma 0.5, lr_min 0.001, warm-up decay 0.1) on two tensors with scripted gradients,
                                  two steps per epoch. Prints the epochs' rates and the final tensors of a full run;
                                  writes DIR/py.pth after epoch SAVE_AFTER; then prints the same for a run resumed
                                  from DIR/cpp.pth (what the C++ test wrote) as torchvision's train.py resumes.
  resnet18_export DIR          -> writes DIR/torchvision_resnet18.pth (torchvision's resnet18, 10 classes, BatchNorm
                                  statistics from one training batch) and prints its eval log_softmax of a fixed input
  resnet18_import PATH REF     -> 1 if PATH loads into torchvision's resnet18 strictly and equals REF, key order too
  loss LS                      -> torchvision's criterion nn.CrossEntropyLoss(label_smoothing=LS) on fixed logits
                                  [64, 10] (sin(0.37 i) * 3) and labels (i % 10): the loss, then the gradient of the
                                  logits; then utils.accuracy's top-1 and top-5 counts
  features DIR                 -> torchvision's train_one_epoch with --amp (CPU autocast, bfloat16), a GradScaler
                                  (init_scale 1024, growth_interval 3), --clip-grad-norm 0.5 and --model-ema (decay
                                  0.9, every 2 steps) for 8 steps of batch 8 (images sin(0.01 i + t), labels
                                  (i + t) % 10; step 4's loss times inf) from the mnist_cnn in DIR/init.pth ("model"),
                                  SGD lr 0.05 momentum 0.9 wd 1e-4, torch.manual_seed(0) before the first step.
                                  Writes DIR/py.pth {"model", "model_ema", "scaler"}; prints the steps that stepped.
"""
import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts", "reference"))
from cpu_grad_scaler import cpu_grad_scaler  # noqa: E402
from torch.utils.data import DistributedSampler


def make_optim(params, opt_name, sched_name, warmup_epochs, warmup_method, epochs):
    """As torchvision's references/classification/train.py builds them."""
    if opt_name.startswith("sgd"):
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov="nesterov" in opt_name)
    else:
        opt = torch.optim.AdamW(params, lr=0.1, weight_decay=1e-4)
    if sched_name == "steplr":
        main_sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    else:
        main_sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs - warmup_epochs, eta_min=0.001)
    if warmup_epochs == 0:
        return opt, main_sched
    if warmup_method == "linear":
        warmup = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=warmup_epochs)
    else:
        warmup = torch.optim.lr_scheduler.ConstantLR(opt, factor=0.1, total_iters=warmup_epochs)
    return opt, torch.optim.lr_scheduler.SequentialLR(opt, schedulers=[warmup, main_sched], milestones=[warmup_epochs])


def run_optim(params, opt, sched, first_epoch, epochs, save=None):
    """Two steps per epoch with gradients cos(p * (t + 1)) + 0.1 t (t the global step); returns the epochs' rates."""
    rates = []
    for epoch in range(first_epoch, epochs):
        rates.append(opt.param_groups[0]["lr"])
        for s in range(2):
            t = 2 * epoch + s
            with torch.no_grad():
                for p in params:
                    p.grad = torch.cos(p * float(t + 1)) + 0.1 * t
            opt.step()
        sched.step()
        if save and epoch == save[0]:
            torch.save({"params": [p.detach() for p in params], "optimizer": opt.state_dict(),
                        "lr_scheduler": sched.state_dict(), "epoch": epoch}, save[1])
    return rates


def print_numbers(values):
    print(" ".join(repr(float(v)) for v in values))


class ExponentialMovingAverage(torch.optim.swa_utils.AveragedModel):
    """torchvision/references/classification/utils.py, verbatim."""

    def __init__(self, model, decay, device="cpu"):
        def ema_avg(avg_model_param, model_param, num_averaged):
            return decay * avg_model_param + (1 - decay) * model_param

        super().__init__(model, device, ema_avg, use_buffers=True)


def run_features(folder):
    from pytorch_ddp_mnist import Net
    model = Net()
    model.load_state_dict(torch.load(folder + "/init.pth")["model"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    scaler = cpu_grad_scaler(init_scale=1024.0, growth_interval=3)
    model_ema = ExponentialMovingAverage(model, decay=0.9)
    model.train()
    torch.manual_seed(0)
    stepped = []
    for i in range(8):  # torchvision's train_one_epoch
        image = (torch.arange(8 * 784, dtype=torch.float32) * 0.01 + i).sin().view(8, 1, 28, 28)
        target = (torch.arange(8) + i) % 10
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = model(image)
            loss = torch.nn.functional.nll_loss(output, target)
        if i == 4:
            loss = loss * math.inf
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        before = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        if scaler.get_scale() >= before:
            stepped.append(i)
        if i % 2 == 0:
            model_ema.update_parameters(model)
    torch.save({"model": model.state_dict(), "model_ema": model_ema.state_dict(), "scaler": scaler.state_dict(), "epoch": 0},
               folder + "/py.pth")
    print(" ".join(str(i) for i in stepped))
    print(scaler.get_scale(), scaler._get_growth_tracker())


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
    elif mode == "optim":
        import warnings
        warnings.simplefilter("ignore")  # SequentialLR's step(0) warns that epoch arguments are deprecated
        opt_name, sched_name, warmup_method = argv[2], argv[3], argv[5]
        warmup_epochs, epochs, save_after = int(argv[4]), int(argv[6]), int(argv[7])
        folder = argv[8]
        params = [torch.linspace(-1, 1, 12).view(3, 4).requires_grad_(), torch.linspace(0.5, -0.5, 5).requires_grad_()]
        opt, sched = make_optim(params, opt_name, sched_name, warmup_epochs, warmup_method, epochs)
        print_numbers(run_optim(params, opt, sched, 0, epochs, (save_after, folder + "/py.pth")))
        print_numbers(torch.cat([p.detach().flatten() for p in params]).tolist())
        saved = torch.load(folder + "/cpp.pth")
        params = [p.clone().requires_grad_() for p in saved["params"]]
        opt, sched = make_optim(params, opt_name, sched_name, warmup_epochs, warmup_method, epochs)
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["lr_scheduler"])
        print_numbers(run_optim(params, opt, sched, saved["epoch"] + 1, epochs))
        print_numbers(torch.cat([p.detach().flatten() for p in params]).tolist())
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
    elif mode == "loss":
        logits = (torch.sin(torch.arange(640, dtype=torch.float32) * 0.37) * 3).view(64, 10).requires_grad_()
        labels = torch.arange(64) % 10
        loss = torch.nn.CrossEntropyLoss(label_smoothing=float(argv[2]))(logits, labels)
        loss.backward()
        print(repr(loss.item()))
        print_numbers(logits.grad.flatten().tolist())
        _, pred = logits.detach().topk(5, 1, True, True)  # torchvision's references/classification/utils.accuracy
        correct = pred.t().eq(labels[None])
        print(correct[:1].flatten().sum().item(), correct[:5].flatten().sum().item())
    elif mode == "features":
        run_features(argv[2])
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv)
