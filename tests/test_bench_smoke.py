"""The benchmarks still run: each of the quick ones at its smallest size, as a user runs it
(a benchmark that broke with a change to syncd went unnoticed until its next measurement).
What they measure is not asserted here: speed is the benchmarks' own business."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

RUNS = {
    "matching_scale": (["--sizes", "small", "--db", "sqlite", "--items", "100"], "ratio"),
    "import_contacts": (["--sizes", "200"], "harvest"),
    "gmail_backfill": (["--messages", "30"], "ratio"),
    "microsoft_backfill": (["--messages", "30"], "ratio"),
}


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(RUNS))
def test_the_benchmark_runs_and_prints_its_figures(name: str) -> None:
    args, figure = RUNS[name]
    # what a benchmark leaves in its temp dirs goes with this one (short: Dovecot's
    # sockets live there, and a socket's path has a length limit)
    scratch = tempfile.mkdtemp(prefix="syncd-bs-")
    try:
        done = subprocess.run(
            [sys.executable, str(ROOT / "bench" / f"{name}.py"), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "TMPDIR": scratch},
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert figure in done.stdout
    assert "Traceback" not in done.stderr
