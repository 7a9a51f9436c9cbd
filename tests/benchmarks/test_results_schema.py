"""Every committed benchmark result follows benchmarks/_bench_env.py's one schema, hardware named."""

import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
from benchmarks._bench_env import check_result, environment, write_result

RESULTS = sorted((BENCH / "results").glob("*.json"))


def test_there_are_results_to_check():
    assert len(RESULTS) >= 10  # 17 files at the time of writing; an empty glob would pass vacuously


@pytest.mark.parametrize("path", RESULTS, ids=[p.name for p in RESULTS])
def test_result_follows_schema(path):
    assert check_result(json.loads(path.read_text())) == []


def test_writer_names_this_machine(tmp_path):
    out = write_result(tmp_path / "x.json", "x", {"rows": [1, 2]}, note="test")
    res = json.loads(out.read_text())
    assert check_result(res) == []
    assert res["benchmark"] == "x" and res["rows"] == [1, 2] and res["environment"]["note"] == "test"
    assert res["environment"]["cpu"] == environment()["cpu"]


def test_checker_names_what_is_wrong():
    problems = check_result({"benchmark": "x", "hardware": "cpu", "environment": {"cpu": "x86_64", "gpu": 3}})
    assert "environment.gpu=3: expected str or NoneType" in problems
    assert "environment.torch: missing" in problems
    assert any(p.startswith("hardware:") for p in problems)
    with pytest.raises(ValueError, match="benchmark=''"):
        write_result(Path("unused.json"), "", {})
