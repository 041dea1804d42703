"""The ``--device`` option shared by the benchmarks, and the device-side timing and memory helpers it needs.

Semantics (the same in every benchmark that has the option):

- ``--device cpu`` (the default) measures exactly what the script measured before the option existed.
- ``--device cuda`` (or ``cuda:N``) builds the model and the batch on the CPU with the same seeds, then moves both
  to the device; a name whose device is not available stops the script with an argparse error before anything runs.
- Every timed section starts and ends with :func:`synchronize`, so wall-clock times include the queued GPU work.
- ``--threads`` / ``torch.set_num_threads`` still sets the CPU's intra-op threads (the host side on a GPU).
- On CUDA the peak allocated memory over the timed part (``torch.cuda.max_memory_allocated`` after
  ``reset_peak_memory_stats`` following the warm-up) is printed as ``peak GPU memory: X MiB`` just before the last
  line; the last line printed stays the key figure.
"""

from __future__ import annotations

import argparse

import torch


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--device`` (default ``cpu``) to a benchmark's parser."""
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N: where the model and data live")


def resolve_device(parser: argparse.ArgumentParser, name: str) -> torch.device:
    """The device named by ``--device``; an unknown name or an unavailable CUDA device is a usage error."""
    try:
        device = torch.device(name)
    except RuntimeError as error:
        parser.error(f"--device {name!r}: {error}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            parser.error(f"--device {name!r}: CUDA is not available (torch {torch.__version__})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            parser.error(f"--device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        parser.error(f"--device {name!r}: only cpu and cuda are supported")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so that a clock read after it counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window on CUDA (a no-op on the CPU)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float | None:
    """Peak memory allocated by tensors on a CUDA device since :func:`reset_peak_memory`, in MiB; None on the CPU."""
    if device.type != "cuda":
        return None
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20
