"""end_process_group: every rank meets at a barrier, the group is destroyed, and ranks other than 0 end at once."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import torch
import torch.distributed as dist

from monai_advseg.engines import end_process_group


def _worker(rank: int, world_size: int, store: str, marks: str, backend: str) -> None:
    kwargs = {}
    if backend == "nccl":  # one GPU per rank, as torchrun's multi_gpu_train.json sets with cuda:$LOCAL_RANK
        torch.cuda.set_device(rank)
        kwargs["device_id"] = torch.device("cuda", rank)
    dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=world_size, **kwargs)
    end_process_group()
    # only a rank that returned from end_process_group gets here
    Path(marks, f"after_{rank}").write_text(str(dist.is_initialized()))


def test_rank_zero_returns_with_the_group_destroyed_and_other_ranks_exit_cleanly(tmp_path, device):
    """gloo with two ranks on CPU; NCCL on CUDA with one rank per GPU (two ranks when there are two GPUs: NCCL
    refuses two ranks on one GPU)."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    world_size = min(2, torch.cuda.device_count()) if backend == "nccl" else 2
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(
            target=_worker, args=(rank, world_size, str(tmp_path / "store"), str(tmp_path), backend), daemon=False
        )
        for rank in range(world_size)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0] * world_size
    assert (tmp_path / "after_0").read_text() == "False"  # rank 0 returned, group destroyed
    assert not (tmp_path / "after_1").exists()  # rank 1 (if any) left inside end_process_group


def test_outside_a_distributed_run_it_does_nothing():
    assert not dist.is_initialized()
    end_process_group()  # returns: no group to end, nothing exits
    assert not dist.is_initialized()
