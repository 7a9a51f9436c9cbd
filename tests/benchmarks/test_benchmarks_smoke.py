"""Each evidence script runs end to end at a toy size, so none can rot (< 60 s together on 2 cores)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"


def _run(script, *args, timeout=120):
    """Run benchmarks/<script> (e.g. "gpu/paper_table.py") as a module, as its docstring says to."""
    module = ".".join(("benchmarks", *Path(script).with_suffix("").parts))
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


def test_paper_table_refuses_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the refusal path is for CPU machines")
    r = _run("gpu/paper_table.py", "--models", "llama_130m")
    assert r.returncode == 2
    assert "needs CUDA" in r.stderr and "--dry-run" in r.stderr


def test_paper_table_rejects_cpu_without_tiny():
    r = _run("gpu/paper_table.py", "--device", "cpu")
    assert r.returncode == 2 and "--tiny" in r.stderr


@pytest.mark.slow  # times steps of a model
def test_paper_table_dry_run(tmp_path):
    out = tmp_path / "pt.json"
    r = _run("gpu/paper_table.py", "--dry-run", "--models", "llama_130m", "--out", out)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["dry_run"] is True and res["environment"]["gpu"] is None
    rows = res["results"]["llama_130m"]
    assert set(rows) == {"baseline", "prac_paper", "prac_full"}
    for row in rows.values():
        assert row["equal_batch"]["tokens_per_s"] > 0
        assert row["max_batch"]["max_batch"] == 8 and row["max_batch"]["capped_at_limit"]
    # PRAC stores less for backward than the baseline; the full setting (8-bit Z, fused loss) less still.
    saved = {k: v["equal_batch"]["saved_for_backward_bytes"] for k, v in rows.items()}
    assert saved["prac_full"] < saved["prac_paper"] < saved["baseline"]
    assert res["prac_configs"]["prac_paper"]["fused_loss"] is False
    assert res["prac_configs"]["prac_full"]["storage_bits"] == 8


@pytest.mark.slow  # trains 10 toy models
def test_convergence_and_grad_quality_toy(tmp_path):
    conv = tmp_path / "conv.json"
    r = _run("quality/convergence.py", "--steps", "4", "--long-factor", "2", "--seeds", "0", "1",
             "--long-variants", "baseline", "prac", "--long-seeds", "0", "--refresh-interval", "2",
             "--eval-sequences", "8",
             "--out", conv, "--save-model", tmp_path / "m.pt")
    assert r.returncode == 0, r.stderr
    res = json.loads(conv.read_text())
    short, long = res["lengths"]["short"], res["lengths"]["long"]
    assert short["steps"] == 4 and long["steps"] == 8
    assert set(short["runs"]) == {"baseline", "prac", "principal_only", "random_only"}
    assert set(long["runs"]) == {"baseline", "prac"}
    assert [x["seed"] for x in short["runs"]["prac"]] == [0, 1]
    # Same seed, same initial weights and data: every variant starts from the same validation loss.
    starts = {v: rs[0]["val_curve"][0] for v, rs in short["runs"].items()}
    assert max(starts.values()) - min(starts.values()) < 1e-6
    assert "rel_gap_vs_baseline" in short["summary"]["variants"]["prac"]
    # Q1 solves per basis, the first forward's included (the last step's is never run): the linear bases
    # after step 2 (T1 = 2), the norm/SwiGLU ones after every step.
    solves = short["runs"]["prac"][0]["principal_refreshes"]
    assert {n for n, k in solves.items() if k == 2} == {n for n in solves if n.endswith("_proj")}
    assert {k for n, k in solves.items() if not n.endswith("_proj")} == {4}
    assert "principal_refreshes" not in short["runs"]["baseline"][0]
    assert (tmp_path / "conv.png").stat().st_size > 0

    gq = tmp_path / "gq.json"
    r = _run("quality/grad_quality.py", "--checkpoint", tmp_path / "m.pt", "--draws", "3", "--batch", "4", "--out", gq)
    assert r.returncode == 0, r.stderr
    g = json.loads(gq.read_text())
    layers = g["per_layer"]["prac"]
    assert layers and set(layers) == set(g["per_layer"]["random_only"])
    for name, row in g["per_layer"]["principal_only"].items():
        assert row["variance"] < 1e-12 * max(row["grad_norm2"], 1e-30)  # deterministic: no variance
    # Random projection at 0.6 n: relative variance about n/r - 1 = 0.67 per layer, far above 0.
    assert all(row["rel_variance"] > 0.1 for row in g["per_layer"]["random_only"].values())


def test_results_doc_matches_committed_results():
    # docs/results.md's tables are generated from benchmarks/results/*.json: a stale doc fails here.
    r = _run("plot_results.py", "--check")
    assert r.returncode == 0, r.stderr


@pytest.mark.slow  # builds and runs 13 model families
def test_family_memory_smoke(tmp_path):
    out = tmp_path / "fm.json"
    r = _run("memory/family_memory.py", "--width", 32, "--seq", 16, "--families", "llama", "gemma2", "--out", out)
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [row["family"] for row in rows] == ["llama", "gemma2"]
    assert all(0 < row["default_ratio"] <= row["limit"] for row in rows)
