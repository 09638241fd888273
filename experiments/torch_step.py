"""Reference point for `make bench`: a single-process PyTorch CPU training step of the same model.

Not a dependency of fedbat-jax; run it in an environment with torch installed:

    python experiments/torch_step.py [--model cnn4|resnet10] [--threads N] [--seconds 3]

CNN4 as REFERENCE.md section 3 (conv3x3 no bias -> BatchNorm -> ReLU -> max-pool, 32/64/128/256,
dense to 10) on 28x28x1; ResNet-10 (one BasicBlock per stage, 64-512, 1x1 shortcuts) on 32x32x3.
Batch 64, SGD lr 0.1; prints the median training samples/s of 3 timed runs.
"""
import argparse
import statistics
import time

import torch
import torch.nn as nn


def cnn4() -> nn.Module:
    layers, cin = [], 1
    for width in (32, 64, 128, 256):
        layers += [nn.Conv2d(cin, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)]
        cin = width
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(256, 10, bias=False))
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, std=0.01)
    return model


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return torch.relu(self.body(x) + self.short(x))


def resnet10(width: int = 64) -> nn.Module:
    layers, cin = [nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()], width
    for i, stride in enumerate((1, 2, 2, 2)):
        layers.append(Block(cin, width * 2**i, stride))
        cin = width * 2**i
    return nn.Sequential(*layers, nn.AvgPool2d(4), nn.Flatten(), nn.Linear(cin, 10, bias=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--model", default="cnn4", choices=["cnn4", "resnet10"])
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = (cnn4() if args.model == "cnn4" else resnet10()).train()
    loss_fn, opt = nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1)
    shape = (64, 1, 28, 28) if args.model == "cnn4" else (64, 3, 32, 32)
    x, y = torch.randn(*shape), torch.randint(0, 10, (64,))

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    for _ in range(10):
        step()
    rates = []
    for _ in range(3):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < args.seconds:
            step()
            n += 1
        rates.append(n * 64 / (time.perf_counter() - t0))
    print(f"{args.model} torch {torch.__version__} threads={torch.get_num_threads()}: "
          f"{statistics.median(rates):.1f} samples/s "
          f"(runs {[round(r) for r in rates]})")


if __name__ == "__main__":
    main()
