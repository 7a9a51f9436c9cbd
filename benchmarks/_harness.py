"""What every benchmark script stands on: where results go, the arguments they share, the models they
build, and `write_result` (the one result schema, benchmarks/_bench_env.py).

A script imports from here rather than computing paths from its own location, so moving it between
the group folders (memory/, compute/, quality/, kernels/, gpu/) changes nothing it writes.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks._bench_env import write_result

__all__ = ["ROOT", "RESULTS", "result_path", "write_result"]

ROOT = Path(__file__).resolve().parents[1]
"""The repository root: scripts run from here (`python -m benchmarks.<group>.<name>`)."""
RESULTS = ROOT / "benchmarks" / "results"
"""Every committed result file lives here (tests/benchmarks/test_results_schema.py checks them all)."""


def result_path(name: str) -> Path:
    """The default result file of a benchmark: benchmarks/results/<name>."""
    return RESULTS / name
