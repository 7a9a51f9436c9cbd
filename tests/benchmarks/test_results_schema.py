"""Every committed benchmark result follows benchmarks/_bench_env.py's one schema: hardware, commit and
command named. The files written before the commit and command were recorded are listed by name, so
the list can only shrink: each owner's next run of its script writes them (python -m benchmarks.regenerate
for the CPU-cheap ones)."""

import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
from benchmarks._bench_env import check_result, environment, write_result

RESULTS = sorted((BENCH / "results").glob("*.json"))
PROVENANCE = ("commit", "dirty", "command", "transformers")
AWAITING_REGENERATION = {
    "adaptive_rank.json", "compute.json", "convergence.json", "convergence_linear_only.json",
    "nonlinear_bias.json",
    "convergence_linear_only_300.json", "convergence_presets.json",
    "fsdp_variance.json", "grad_quality.json", "init_memory.json",
    "memory.json", "planner_accuracy.json",
    "storage_bits.json", "subspace_refresh.json",
}


def test_there_are_results_to_check():
    assert len(RESULTS) >= 10  # 17 files at the time of writing; an empty glob would pass vacuously


def _provenance_problem(problem: str) -> bool:
    return any(problem.startswith(f"environment.{key}") for key in PROVENANCE)


@pytest.mark.parametrize("path", RESULTS, ids=[p.name for p in RESULTS])
def test_result_follows_schema(path):
    problems = check_result(json.loads(path.read_text()))
    if path.name in AWAITING_REGENERATION:
        assert problems, f"{path.name} now records its provenance: remove it from AWAITING_REGENERATION"
        problems = [p for p in problems if not _provenance_problem(p)]
    assert problems == []


def test_writer_names_this_machine(tmp_path):
    out = write_result(tmp_path / "x.json", "x", {"rows": [1, 2]}, note="test")
    res = json.loads(out.read_text())
    assert check_result(res) == []
    assert res["benchmark"] == "x" and res["rows"] == [1, 2] and res["environment"]["note"] == "test"
    assert res["environment"]["cpu"] == environment()["cpu"]
    assert len(res["environment"]["commit"]) == 40 and isinstance(res["environment"]["dirty"], list)
    assert res["environment"]["command"].startswith("python")


def test_checker_names_what_is_wrong():
    problems = check_result({"benchmark": "x", "hardware": "cpu", "environment": {"cpu": "x86_64", "gpu": 3}})
    assert "environment.gpu=3: expected str or NoneType" in problems
    assert "environment.torch: missing" in problems
    assert "environment.commit: missing" in problems and "environment.command: missing" in problems
    assert any(p.startswith("hardware:") for p in problems)
    with pytest.raises(ValueError, match="benchmark=''"):
        write_result(Path("unused.json"), "", {})
