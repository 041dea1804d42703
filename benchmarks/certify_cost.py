"""Cost of a randomized-smoothing certificate relative to the noisy forwards it needs.

``smoothed_segmentation`` runs ``n0 + n`` noisy copies of each case through the network, ``batch_size`` copies per
forward. The key figure times it and divides by the time of the same ``n0 + n`` forwards done the same way (the same
chunks: ``n0`` copies then ``n`` copies, at most ``batch_size`` per forward, each chunk ``image + sigma *
torch.randn(chunk)`` drawn in one call, under ``no_grad`` in eval mode through the same ``SimpleInferer``), measured in
the same run. The difference is what certification adds: drawing the noise copy by copy (so the certificate does not
depend on ``batch_size``), counting the votes, and the statistics.

Also printed, each timed on its own in the same run: the same forwards fed by ``smoothed_segmentation``'s own noise
draws (without counting and statistics), the forwards alone (on pre-drawn noisy batches), the noise draws
(copy by copy and one call per chunk), the vote counting on pre-computed logits, and the statistics (Clopper-Pearson
bounds with Bonferroni, and the binomial test with Holm).

Reference model: MONAI 2D UNet channels (16, 32, 64, 128, 256), strides 2, 2 residual units
(``benchmarks/reference_model.py``), random weights in eval mode, input 1 x 96 x 96.

Usage: ``python benchmarks/certify_cost.py [--cases 1] [--size 96] [--n0 16] [--n 128] [--batch-size 32]
[--repeats 5] [--threads 2] [--device cpu]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_device import add_device_argument, resolve_device, synchronize
from monai.inferers import SimpleInferer
from reference_model import reference_unet

from monai_advseg.certify import binomial_upper_tail_p_values, clopper_pearson_lower, holm_reject, smoothed_segmentation
from monai_advseg.certify.smoothing import _add_class_votes, _add_top_votes, _noisy_chunks, _predicted_classes


def _timed(function, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        synchronize(device)
        began = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def _chunk_sizes(samples: int, batch_size: int) -> list[int]:
    return [min(batch_size, samples - start) for start in range(0, samples, batch_size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1, help="cases (B) in the certified batch")
    parser.add_argument("--size", type=int, default=96, help="image side")
    parser.add_argument("--n0", type=int, default=16)
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32, help="noisy copies per forward")
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    add_device_argument(parser)
    args = parser.parse_args()
    device = resolve_device(parser, args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    network = reference_unet().to(device).eval()
    image = torch.rand(args.cases, 1, args.size, args.size, generator=torch.Generator().manual_seed(0)).to(device)
    inferer = SimpleInferer()
    sigma, alpha = args.sigma, 0.001
    chunks = _chunk_sizes(args.n0, args.batch_size) + _chunk_sizes(args.n, args.batch_size)
    voxels = args.size * args.size

    def certify() -> None:
        generator = torch.Generator(device=device).manual_seed(0)
        smoothed_segmentation(
            network,
            image,
            sigma=sigma,
            n0=args.n0,
            n=args.n,
            alpha=alpha,
            batch_size=args.batch_size,
            inferer=inferer,
            generator=generator,
        )

    def reference_forwards() -> None:
        generator = torch.Generator(device=device).manual_seed(0)
        with torch.no_grad():
            for case in range(args.cases):
                for size in chunks:
                    noise = torch.randn((size, *image.shape[1:]), generator=generator, device=device)
                    inferer(image[case] + sigma * noise, network)

    def forwards_same_noise() -> None:
        # smoothed_segmentation's own copy-by-copy noise draws and forwards, without the counting and statistics
        generator = torch.Generator(device=device).manual_seed(0)
        with torch.no_grad():
            for case in range(args.cases):
                for samples in (args.n0, args.n):
                    for noisy in _noisy_chunks(image[case], samples, sigma, args.batch_size, generator):
                        inferer(noisy, network)

    noisy_batches = [image[0] + sigma * torch.randn((size, *image.shape[1:]), device=device) for size in chunks]

    def forwards_alone() -> None:
        with torch.no_grad():
            for batch in noisy_batches:
                inferer(batch, network)

    def noise_copy_by_copy() -> None:
        generator = torch.Generator(device=device).manual_seed(0)
        for samples in (args.n0, args.n):
            for _ in _noisy_chunks(image[0], samples, sigma, args.batch_size, generator):
                pass

    def noise_per_chunk() -> None:
        generator = torch.Generator(device=device).manual_seed(0)
        for size in chunks:
            image[0] + sigma * torch.randn((size, *image.shape[1:]), generator=generator, device=device)

    with torch.no_grad():
        logits = [inferer(batch, network) for batch in noisy_batches]
    selection_logits = logits[: len(_chunk_sizes(args.n0, args.batch_size))]
    estimation_logits = logits[len(selection_logits) :]

    def counting() -> None:
        # smoothed_segmentation's two counting loops on one case, on pre-computed logits
        voxel_index = torch.arange(voxels, device=device)
        class_counts = torch.zeros(2 * voxels, dtype=torch.int32, device=device)
        for chunk in selection_logits:
            _add_class_votes(class_counts, _predicted_classes(chunk).reshape(chunk.shape[0], voxels), voxel_index)
        top = class_counts.reshape(-1, voxels).argmax(dim=0).to(torch.uint8)
        top_counts = torch.zeros(voxels, dtype=torch.int32, device=device)
        for chunk in estimation_logits:
            _add_top_votes(top_counts, _predicted_classes(chunk).reshape(chunk.shape[0], voxels), top)

    counts = torch.randint(0, args.n + 1, (voxels,), device=device, dtype=torch.int32)

    def bonferroni_statistics() -> None:
        lower = clopper_pearson_lower(counts, args.n, alpha / voxels)
        sigma * torch.special.ndtri(lower.clamp(min=0.5))

    def holm_statistics() -> None:
        holm_reject(binomial_upper_tail_p_values(counts, args.n, 0.75), alpha)

    for function in (certify, reference_forwards, forwards_alone, counting, bonferroni_statistics):
        function()  # warm-up: allocator and oneDNN primitive caches
    certify_times, reference_times, same_noise_times = [], [], []
    forward_times, copy_noise_times, chunk_noise_times, count_times, bonferroni_times, holm_times = (
        [] for _ in "123456"
    )
    for _ in range(args.repeats):  # interleaved so that load drifts affect all alike
        certify_times.append(_timed(certify, 1, device))
        reference_times.append(_timed(reference_forwards, 1, device))
        same_noise_times.append(_timed(forwards_same_noise, 1, device))
        forward_times.append(_timed(forwards_alone, 1, device) * args.cases)
        copy_noise_times.append(_timed(noise_copy_by_copy, 3, device) * args.cases)
        chunk_noise_times.append(_timed(noise_per_chunk, 3, device) * args.cases)
        count_times.append(_timed(counting, 3, device) * args.cases)
        bonferroni_times.append(_timed(bonferroni_statistics, 3, device) * args.cases)
        holm_times.append(_timed(holm_statistics, 3, device) * args.cases)
    certify_seconds = statistics.median(certify_times)
    reference_seconds = statistics.median(reference_times)
    forwards = args.cases * len(chunks)
    print(
        f"cases: {args.cases} x 1 x {args.size} x {args.size}, n0: {args.n0}, n: {args.n}, batch_size: "
        f"{args.batch_size} ({forwards} forwards), sigma: {sigma}, alpha: {alpha}"
    )
    print(f"threads: {torch.get_num_threads()}, device: {device}, repeats: {args.repeats} (medians)")
    print(f"smoothed_segmentation: {certify_seconds * 1e3:.1f} ms")
    print(f"(n0 + n) noisy forwards, same chunks, one randn per chunk: {reference_seconds * 1e3:.1f} ms")
    same_noise_seconds = statistics.median(same_noise_times)
    print(f"the same forwards fed by smoothed_segmentation's noise draws: {same_noise_seconds * 1e3:.1f} ms")
    print(f"  forwards alone (pre-drawn batches): {statistics.median(forward_times) * 1e3:.1f} ms")
    print(f"  noise one randn per chunk: {statistics.median(chunk_noise_times) * 1e3:.2f} ms")
    print(f"noise copy by copy (what smoothed_segmentation draws): {statistics.median(copy_noise_times) * 1e3:.2f} ms")
    print(f"vote counting (classes, scatter_add_, compare + sum): {statistics.median(count_times) * 1e3:.2f} ms")
    print(f"statistics, Clopper-Pearson + Bonferroni: {statistics.median(bonferroni_times) * 1e3:.2f} ms")
    print(f"statistics, binomial test + Holm (tau 0.75): {statistics.median(holm_times) * 1e3:.2f} ms")
    print(f"per forward: {reference_seconds / forwards * 1e3:.1f} ms; voxels per case: {voxels}")
    ratio = certify_seconds / reference_seconds
    print(f"certification time / (n0 + n) forwards: {ratio:.3f} (target <= 1.1)")


if __name__ == "__main__":
    main()
