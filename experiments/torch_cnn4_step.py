"""Reference point for `make bench`: a single-process PyTorch CPU training step of the same CNN4.

Not a dependency of fedbat-jax; run it in an environment with torch installed:

    python experiments/torch_cnn4_step.py [--threads N] [--seconds 3]

CNN4 as REFERENCE.md section 3 (conv3x3 no bias -> BatchNorm -> ReLU -> max-pool, 32/64/128/256,
dense to 10), batch 64 of 28x28x1, SGD lr 0.1; prints the median training samples/s of 3 timed runs.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, loss_fn = cnn4().train(), nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))

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
    print(f"torch {torch.__version__} threads={torch.get_num_threads()}: {statistics.median(rates):.1f} samples/s "
          f"(runs {[round(r) for r in rates]})")


if __name__ == "__main__":
    main()
