"""Planner accuracy: predicted vs measured bytes saved for backward (forward + loss), on CPU.

For the full LLaMA-60M and LLaMA-130M shapes (and GPT-2 124M), bf16, SDPA, a small batch
(saved bytes are linear in the batch; the batch-independent part is a few KiB of rotary
tables), baseline and several PRAC settings. Measured with prac_dist.memory.measure_saved_bytes;
predicted with prac_dist.planner.saved_bytes (a formula, no measurement). Target: within 5%.

    OMP_NUM_THREADS=1 python benchmarks/planner_accuracy.py [--batch 1] [--seq 128]

The principal basis is computed with principal_solver="randomized" to keep the CPU run short
(the exact eigendecomposition gives bases of the same shapes, hence the same bytes).
Prints a table and writes benchmarks/results/planner_accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import prac_dist
from prac_dist import PRACConfig, apply_prac, remove_prac
from prac_dist.loss import install_fused_loss, uninstall_fused_loss
from prac_dist.memory import measure_saved_bytes
from prac_dist.planner import PRESETS, Setting, build_model, saved_bytes

from _bench_env import write_result  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

SETTINGS = [
    Setting(),
    Setting(fused_loss=True),
    Setting(prac=True, fused_loss=True),  # the PRACConfig defaults
    Setting(prac=True, compress_nonlinear=False),
    Setting(prac=True, principal_ratio=0.2, random_ratio=0.2, nonlinear_principal_ratio=0.1,
            nonlinear_random_ratio=0.1, storage_bits=8, fused_loss=True),
    Setting(prac=True, principal_ratio=0.4, random_ratio=0.4, nonlinear_principal_ratio=0.3,
            nonlinear_random_ratio=0.3, fused_loss=False),
]


def measure(model, setting: Setting, x: torch.Tensor) -> int:
    """Apply the setting, count the saved bytes of model(input_ids=x, labels=x).loss, undo it."""
    if setting.prac:
        apply_prac(model, PRACConfig(principal_solver="randomized", **setting.prac_config_dict()))
    elif setting.fused_loss:
        assert install_fused_loss(model)
    try:
        report = measure_saved_bytes(lambda: model(input_ids=x, labels=x).loss, model)
        return report.total_bytes
    finally:
        if setting.prac:
            remove_prac(model)
        elif setting.fused_loss:
            uninstall_fused_loss(model)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["llama_60m", "llama_130m", "gpt2_124m"], choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--out", default=str(RESULTS / "planner_accuracy.json"))
    args = ap.parse_args(argv)
    t0 = time.time()
    rows = []
    print(f"{'model':<11} {'setting':<46} {'measured MiB':>12} {'predicted MiB':>13} {'error':>7}")
    for name in args.models:
        torch.manual_seed(0)
        shape = PRESETS[name]
        model = build_model(shape, dtype=torch.bfloat16)
        x = torch.randint(0, shape.vocab, (args.batch, args.seq))
        for s in SETTINGS:
            got = measure(model, s, x)
            want = sum(saved_bytes(shape, s, args.batch, args.seq, 2).values())
            err = (want - got) / got
            rows.append({"model": name, "setting": s.label(), "prac_config": s.prac_config_dict(),
                         "measured_bytes": got, "predicted_bytes": want, "relative_error": err})
            print(f"{name:<11} {s.label():<46} {got / 2**20:>12.2f} {want / 2**20:>13.2f} {err:>+7.2%}", flush=True)
        del model
    worst = max(abs(r["relative_error"]) for r in rows)
    print(f"worst |error| {worst:.3%} (target <= 5%)")
    result = {
        "batch": args.batch, "seq": args.seq, "dtype": "bfloat16",
        "attn_implementation": "sdpa", "rows": rows, "worst_abs_relative_error": worst,
        "meets_target": worst <= 0.05, "seconds": round(time.time() - t0, 1),
        "note": "CPU measurement of saved bytes; the GPU peak check (max_memory_allocated) was not run: no GPU",
    }
    out = write_result(args.out, "planner_accuracy", result)
    print(f"wrote {out}")
    return 0 if worst <= 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())
