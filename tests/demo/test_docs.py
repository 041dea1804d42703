"""The documentation's runnable parts: the own-pipeline example and the generated API reference."""

import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_own_pipeline_example_runs_and_reports_each_step():
    result = subprocess.run(
        [sys.executable, str(DOCS / "examples" / "own_pipeline.py"), "--epochs", "1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert any(line.startswith("last iteration: loss") and "inverse FGSM" in line for line in lines)
    assert any("max |FGSM - x| = 0.050" in line for line in lines)
    sweep = [line for line in lines if line.startswith("eps ")]
    assert len(sweep) == 4  # clean row + 3 strengths


def test_api_reference_is_up_to_date_and_covers_the_public_names():
    result = subprocess.run(
        [sys.executable, str(DOCS / "make_api_reference.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    text = (DOCS / "api.md").read_text()
    for name in ("fgsm_pair", "AdversarialAugmentationTrainer", "RobustnessEvaluator", "NLCEN", "FGSMd"):
        assert f"### `{name}`" in text


def test_relative_links_in_the_docs_point_to_files_that_exist():
    import re

    root = DOCS.parent
    pages = [root / "README.md", *DOCS.rglob("*.md"), *(root / "bundles").glob("*/docs/README.md")]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(root)} -> {target}")
    assert broken == []
