"""End to end: a CPU run writes metrics, checkpoints and a report; a SIGKILLed run resumes bit for bit;
bad input exits with status 2 and leaves no checkpoint behind."""

import json
import sys

import pytest
import torch

from prac_dist.train.cli import main

from _train_util import run_cli, tiny_config

# Run in a fresh interpreter: LocalBackend.save SIGKILLs the process once it has written the model into the
# temporary folder of the step-6 checkpoint, i.e. mid-checkpoint and after steps 1..6 ran: the worst moment.
_KILL_AT_STEP_6 = """
import os, signal, sys
from prac_dist.train.backends import local
from prac_dist.train.cli import main
save = local.LocalBackend.save
def save_then_die(self, path, extra):
    save(self, path, extra)
    if path.name == ".tmp-step_0000006":
        os.kill(os.getpid(), signal.SIGKILL)
local.LocalBackend.save = save_then_die
sys.exit(main(sys.argv[1:]))
"""


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # training run
def test_short_run_writes_metrics_checkpoint_and_report(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    cfg = tiny_config(tmp_path, corpus, max_steps=3, grad_accum=2)
    assert main(["--config", cfg, "--output-dir", out]) == 0
    recs = _records(out)
    memory = recs[0]
    assert memory["kind"] == "memory" and 0 < memory["saved_bytes"] < memory["saved_bytes_no_prac"]
    train = [r for r in recs if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3] and all(r["tokens_per_s"] > 0 for r in train)
    assert [r["tokens"] for r in train] == [256, 512, 768]  # 4 sequences x 32 tokens x 2 micro-batches
    evals = [r for r in recs if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [2, 3] and evals[-1]["prac_stats"]
    assert all(0 < v <= 1 for v in evals[-1]["prac_stats"].values())
    assert evals[-1]["prac_nonfinite_refreshes"] == 0  # clean data: every refresh took a new basis
    # The subspace schedule advanced once per optimizer step, not per micro-batch.
    state = torch.load(out / "checkpoints" / "step_0000003" / "local.pt", weights_only=False)
    assert state["prac"]["step"] == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_val_loss"] == evals[-1]["val_loss"]
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| prac |" in (out / "report.md").read_text()
    # Without --resume an existing run is never overwritten.
    assert main(["--config", cfg, "--output-dir", out]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err


@pytest.mark.slow  # two training runs
def test_compare_writes_one_side_by_side_report(tmp_path, corpus):
    out = tmp_path / "cmp"
    assert main(["--config", tiny_config(tmp_path, corpus, max_steps=2), "--compare", "--output-dir", out]) == 0
    base, prac = _records(out / "baseline"), _records(out / "prac")
    # Same seed and data: the first step's loss is computed before any update, on the same batch, so the two
    # runs agree to rounding (PRAC changes only what backward stores, and the chunked loss head).
    assert abs(base[1]["train_loss"] - prac[1]["train_loss"]) < 1e-4
    assert prac[0]["saved_bytes"] < base[0]["saved_bytes"]
    report = (out / "report.md").read_text()
    assert "| baseline |" in report and "| prac |" in report and "PRAC final validation loss vs baseline" in report
    assert (out / "report.png").is_file()
    # The time figure: both models set up side by side, alternating steps (max_steps=2: 2 timed rounds).
    times = json.loads((out / "timing.json").read_text())
    assert [len(times["baseline"]), len(times["prac"])] == [2, 2] and min(times["baseline"] + times["prac"]) > 0
    assert "Time per optimizer step, measured side by side (2 alternating steps" in report


@pytest.mark.slow  # three training processes
def test_sigkill_then_resume_is_bit_exact(tmp_path, corpus):
    cfg = tiny_config(tmp_path, corpus, max_steps=8, save_every=2)
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert run_cli(["--config", cfg, "--output-dir", full]).returncode == 0

    proc = run_cli(["-c", _KILL_AT_STEP_6, "--config", cfg, "--output-dir", killed], python_args_only=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    ckpts = sorted(p.name for p in (killed / "checkpoints").iterdir())
    assert ckpts == [".tmp-step_0000006", "step_0000002", "step_0000004"]  # the partial one is hidden
    assert max(r["step"] for r in _records(killed)) == 6

    proc = run_cli(["--config", cfg, "--output-dir", killed, "--resume"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resumed from" in proc.stderr and "step 4" in proc.stderr
    a, b = _records(full), _records(killed)
    strip = ("tokens_per_s", "elapsed_s")
    assert [{k: v for k, v in r.items() if k not in strip} for r in a] == \
           [{k: v for k, v in r.items() if k not in strip} for r in b]  # every loss, lr, grad norm, stat
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (full, killed))
    assert sa["final_train_loss"] == sb["final_train_loss"] and sa["final_val_loss"] == sb["final_val_loss"]
    assert not any(p.name.startswith(".tmp") for p in (killed / "checkpoints").iterdir())


def test_bad_input_exits_2_and_leaves_no_checkpoint(tmp_path, corpus, capsys):
    out = tmp_path / "bad"
    missing = ["--config", tiny_config(tmp_path, corpus), "--output-dir", out,
               "--set", f"data.train_files=[{tmp_path / 'gone.txt'}]"]
    assert main(missing) == 2
    err = capsys.readouterr().err
    assert "gone.txt" in err and "does not exist" in err and len(err.strip().splitlines()) == 1
    assert main(["--config", tiny_config(tmp_path, corpus), "--output-dir", out,
                 "--set", "model.vocab_size=5000"]) == 2
    err = capsys.readouterr().err
    assert "50257 tokens but the model's vocabulary is 5000" in err and "Traceback" not in err
    assert not out.exists()  # nothing written, so a later --resume has nothing to trip on
