"""end_process_group: every rank meets at a barrier, the group is destroyed, and ranks other than 0 end at once."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import torch.distributed as dist

from monai_advseg.engines import end_process_group


def _worker(rank: int, world_size: int, store: str, marks: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    end_process_group()
    # only a rank that returned from end_process_group gets here
    Path(marks, f"after_{rank}").write_text(str(dist.is_initialized()))


def test_rank_zero_returns_with_the_group_destroyed_and_other_ranks_exit_cleanly(tmp_path):
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_worker, args=(rank, 2, str(tmp_path / "store"), str(tmp_path)), daemon=False)
        for rank in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0]
    assert (tmp_path / "after_0").read_text() == "False"  # rank 0 returned, group destroyed
    assert not (tmp_path / "after_1").exists()  # rank 1 left inside end_process_group


def test_outside_a_distributed_run_it_does_nothing():
    assert not dist.is_initialized()
    end_process_group()  # returns: no group to end, nothing exits
    assert not dist.is_initialized()
