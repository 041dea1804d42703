"""Peak memory growth of forward+backward of NonLocalBlock and ContextEncoding vs. their textbook forms.

Each case runs in a fresh subprocess: the growth of ``ru_maxrss`` between "module and input built, kernels warmed up
on a tiny input" and "after forward+backward" is the peak extra memory of one training step of the block.
Cases: NonLocalBlock at N = 128x128, C = 64 (no sub-sampling, the hard case) through SDPA and through the naive
``softmax(theta phi^T) g``; ContextEncoding at N = 16384 (128x128), K = 32, C = C' = 256 in the compact form and
with the B x N x K x C residual tensor. The last line is the key figure: the two blocks' peaks in MiB.

Usage: ``python benchmarks/nonlocal_memory.py [--skip-naive]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys
import torch
from monai_advseg.networks.blocks import ContextEncoding, NonLocalBlock

torch.set_num_threads(2)
case = sys.argv[1]


def naive_attention(block, x):
    b, ci = x.shape[0], block.inter_channels
    q = block.theta(x).reshape(b, ci, -1).transpose(1, 2)
    k = block.pool(block.phi(x)).reshape(b, ci, -1)
    v = block.pool(block.g(x)).reshape(b, ci, -1).transpose(1, 2)
    y = torch.softmax(q @ k, dim=-1) @ v
    return block.w_z(y.transpose(1, 2).reshape([b, ci] + list(x.shape[2:]))) + x


def textbook_encoding(enc, x):
    z = enc.reduce(x)
    z = z.reshape(z.shape[0], enc.encoding_channels, -1).transpose(1, 2)  # (B, N, C')
    r = z.unsqueeze(2) - enc.codewords  # B x N x K x C'
    a = torch.softmax(-enc.smoothing * (r * r).sum(-1), dim=-1)
    e = (a.unsqueeze(-1) * r).sum(1)
    return torch.sigmoid(enc.fc(torch.relu(enc.codeword_norm(e)).sum(1)))


if case.startswith("nonlocal"):
    module = NonLocalBlock(2, 64, sub_sample=False)
    size, fn = (128, 128), (naive_attention if case.endswith("naive") else (lambda m, x: m(x)))
    channels = 64
else:
    module = ContextEncoding(2, 256, num_codes=32)
    size, fn = (128, 128), (textbook_encoding if case.endswith("naive") else (lambda m, x: m(x)))
    channels = 256
x = torch.randn(1, channels, *size, requires_grad=True)
fn(module, torch.randn(1, channels, 8, 8)).sum().backward()  # load kernels, grow the allocator's small pools
module.zero_grad()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
fn(module, x).square().sum().backward()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"case": case, "peak_mib": (after - before) / 1024.0}))
"""


def run_case(case: str) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, case], capture_output=True, text=True, check=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["peak_mib"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-naive", action="store_true", help="skip the multi-GB textbook references")
    args = parser.parse_args()
    results = {}
    for case in ("nonlocal_sdpa", "nonlocal_naive", "encoding_compact", "encoding_naive"):
        if args.skip_naive and case.endswith("naive"):
            continue
        results[case] = run_case(case)
        print(f"{case:18s} forward+backward peak growth: {results[case]:9.1f} MiB", flush=True)
    if not args.skip_naive:
        print(f"NonLocalBlock naive/SDPA ratio: {results['nonlocal_naive'] / results['nonlocal_sdpa']:.1f}x")
        print(f"ContextEncoding textbook/compact ratio: {results['encoding_naive'] / results['encoding_compact']:.1f}x")
    print(
        f"NonLocalBlock(N=128x128, C=64) {results['nonlocal_sdpa']:.1f} MiB (target <= 100); "
        f"ContextEncoding(N=16384, K=32, C=256) {results['encoding_compact']:.1f} MiB (target <= 200)"
    )


if __name__ == "__main__":
    main()
