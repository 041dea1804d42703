"""Forward+backward time of NLCEN(resnet18) and NLCEUNet relative to MONAI's reference UNet.

2D, batch 8, 256 x 256, one input channel, two classes, ``torch.set_num_threads(2)`` (``--threads``). The reference
UNet and the NLCEUNet use channels (16, 32, 64, 128, 256), strides 2, num_res_units 2. Each network gets two warm-up
steps, then the networks are timed in interleaved rounds (the three networks of a round run back to back, under about
the same machine load). On a shared machine other processes make single rounds several times slower (two OpenMP
threads wait for each other when one is descheduled), so the median and the minimum time per network are printed, and
the key figure is the median over rounds of the per-round ratio to the UNet; ``--threads 1`` is the robust choice on a
loaded machine. NLCEN's forward+backward includes its five deep-supervision outputs (training mode).
The last line is the key figure: the two ratios.

Usage: ``python benchmarks/network_cost.py [--repeats 7] [--batch 8] [--size 256] [--threads 2]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from monai.networks.nets import UNet

from monai_advseg.networks.nets import NLCEN, NLCEUNet


def step(net: torch.nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    out = net(x)
    outs = out if isinstance(out, list) else [out]
    sum(o.float().square().mean() for o in outs).backward()
    net.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads; 1 is robust to a loaded machine")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    unet_args = {"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2), "num_res_units": 2}
    nets = {
        "UNet": UNet(2, 1, 2, **unet_args),
        "NLCEUNet": NLCEUNet(2, 1, 2, **unet_args),
        "NLCEN(resnet18)": NLCEN(2, 1, 2, backbone="resnet18"),
    }
    x = torch.rand(args.batch, 1, args.size, args.size)
    for name, net in nets.items():
        net.train()
        params = sum(p.numel() for p in net.parameters())
        for _ in range(2):
            step(net, x)
        print(f"{name:16s} {params / 1e6:6.2f} M parameters, warmed up", flush=True)
    times: dict[str, list[float]] = {name: [] for name in nets}
    for r in range(args.repeats):
        for name, net in nets.items():
            times[name].append(step(net, x))
        print(f"round {r + 1}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()), flush=True)
    med = {name: statistics.median(t) for name, t in times.items()}
    best = {name: min(t) for name, t in times.items()}
    ratio = {name: statistics.median(t / u for t, u in zip(times[name], times["UNet"], strict=True)) for name in nets}
    for name in nets:
        print(
            f"{name:16s} forward+backward median {med[name]:.2f} s, min {best[name]:.2f} s "
            f"(min/min {best[name] / best['UNet']:.2f}x UNet)"
        )
    print(
        f"forward+backward time vs UNet (batch {args.batch}, {args.size}^2, {args.threads} threads, "
        f"median of per-round ratios): "
        f"NLCEN(resnet18) {ratio['NLCEN(resnet18)']:.2f}x, NLCEUNet {ratio['NLCEUNet']:.2f}x"
    )


if __name__ == "__main__":
    main()
