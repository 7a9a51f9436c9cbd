"""benchmarks/gpu/gpu_check.py end to end on CPU (--dry-run: tiny shapes, Triton's interpreter), so it cannot rot."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _run(*args, timeout=900):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu.gpu_check", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
def test_dry_run_end_to_end(tmp_path):
    # ~100 s on 2 loaded cores: the interpreter runs every kernel twice, then 3 tiny trainings + searches.
    out = tmp_path / "gpu_check.json"
    r = _run("--dry-run", "--out", out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    from benchmarks._bench_env import check_result

    assert check_result(res) == []
    assert res["dry_run"] is True and res["environment"]["gpu"] is None and "dry run" in res["environment"]["note"]
    kernels = {row["kernel"] for row in res["kernels"]}
    assert {"fused_project 8-bit", "rmsnorm backward", "swiglu forward"} <= kernels
    assert all(row["matches_reference"] for row in res["kernels"]), res["kernels"]
    settings = res["llama_130m"]["settings"]
    assert list(settings) == ["baseline", "paper", "defaults"]
    for row in settings.values():
        assert row["equal_batch"]["tokens_per_s"] > 0 and row["max_batch"]["max_batch"] >= 1
    assert settings["baseline"]["config"] is None and settings["defaults"]["config"]["fused_loss"] is True


def test_refuses_without_cuda_and_writes_nothing():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the refusal path is for CPU machines")
    r = _run(timeout=300)
    assert r.returncode == 2 and "--dry-run" in r.stderr
    assert "wrote" not in r.stdout


def test_kernel_comparison_tolerances():
    from benchmarks.gpu import gpu_check

    want = torch.ones(4, 8, dtype=torch.bfloat16)
    assert gpu_check.compare("k", want + 2 ** -7, want)["matches_reference"]  # one bf16 ulp at 1.0
    assert not gpu_check.compare("k", want * 1.05, want)["matches_reference"]
    # 8-bit storage: codes x scale, 2 codes of slack (independent stochastic rounding + one rounding of Z).
    # Each stored row's largest |code| is 127 (absmax scale), so 2 codes are 2/127 of the largest entry.
    codes, scale = torch.tensor([[127, 50, -30], [127, 3, 0]], dtype=torch.int8), torch.tensor([0.5, 0.25])
    assert gpu_check.compare("q", (codes - 2, scale), (codes, scale))["matches_reference"]
    assert not gpu_check.compare("q", (codes - 3, scale), (codes, scale))["matches_reference"]


def test_no_dry_run_result_is_committed():
    # A dry run writes only with --out; the committed file, if any, must be a GPU measurement.
    path = ROOT / "benchmarks" / "results" / "gpu_check.json"
    if path.exists():
        res = json.loads(path.read_text())
        assert res["dry_run"] is False and res["environment"]["gpu"]


def test_largest_batch_search_stops_at_the_deadline(monkeypatch):
    from benchmarks.gpu import paper_table

    clock = [0.0]
    monkeypatch.setattr(paper_table.time, "perf_counter", lambda: clock[0])

    class Fake(paper_table.Bench):
        def fits(self, model_name, setting, batch):  # each trial takes 1 s of the fake clock
            self.trials.append(batch)
            clock[0] += 1.0
            return batch <= 37

    bench = Fake(torch.device("cpu"), torch.float32, 8, 1, 1, tiny=True)
    bench.trials = []
    assert bench.max_batch("m", "s", start=4, limit=1024, resolution=1) == {
        "max_batch": 37, "capped_at_limit": False, "first_failing_batch": 38}
    assert len(bench.trials) > 3
    bench.trials, clock[0] = [], 0.0
    out = bench.max_batch("m", "s", start=4, limit=1024, resolution=1, deadline=2.5)
    # Trials start at t = 0, 1, 2 (4, 8, 16 fit); none starts after t = 2.5.
    assert bench.trials == [4, 8, 16]
    assert out == {"max_batch": 16, "capped_at_limit": False, "stopped_at_deadline": True}
    assert "fits" not in vars(bench)  # the bounded wrapper is gone again
