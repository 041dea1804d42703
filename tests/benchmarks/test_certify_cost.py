"""benchmarks/certify_cost.py on the CPU with tiny sizes: its chunking, its components and its last line."""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import certify_cost  # noqa: E402  (benchmarks/ is not a package)


def test_chunks_are_the_certificates_forwards():
    assert certify_cost._chunk_sizes(16, 32) == [16]
    assert certify_cost._chunk_sizes(70, 32) == [32, 32, 6]


def test_tiny_run_prints_the_components_and_the_ratio_last(monkeypatch, capsys):
    arguments = ["--size", "32", "--n0", "3", "--n", "5", "--batch-size", "2", "--repeats", "1", "--threads", "1"]
    monkeypatch.setattr(sys, "argv", ["certify_cost.py", *arguments])
    certify_cost.main()
    lines = capsys.readouterr().out.strip().splitlines()
    assert "(5 forwards)" in lines[0]  # 3 copies in chunks of 2, then 5 copies in chunks of 2
    assert any(line.startswith("vote counting") for line in lines)
    assert re.fullmatch(r"certification time / \(n0 \+ n\) forwards: \d+\.\d{3} \(target <= 1\.1\)", lines[-1])
