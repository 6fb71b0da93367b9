"""What the benchmarks share: each phase runs in its own process, so its peak RSS is its own."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from typing import Any


def run_phase(script: str, *args: str, timeout: float | None = None) -> dict[str, Any]:
    """Run ``script`` with ``args``; its last line of output is the phase's JSON result."""
    out = subprocess.run(
        [sys.executable, script, *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=timeout,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
