"""Schedules of the projected norm/SwiGLU inputs' Q1 refresh: validation loss and FLOPs per step.

PRACConfig.paper() projects every saved input (linear 0.3/0.3, norm/SwiGLU 0.2/0.2, 16-bit Z). Its error in
the norm/SwiGLU inputs enters dX, and a Q1 from older batches leaves energy in the c-amplified random part
(c = 4 at 0.2/0.2). This benchmark compares when those nonlinear bases are recomputed, every other
setting at the paper's (linear T1 = T2 = 500, exact eigh):

  quality  a small LLaMA (benchmarks.quality.convergence's setup: 64 wide, 2 layers, vocab 4096, batch 16 x 64
           tokens, AdamW 3e-3 warmup + cosine) trained --steps steps on the bundled WikiText-2 per schedule
           and seed; final validation loss against the baseline of the same seed.
  flops    exact FLOPs (FlopCounterMode + the decompositions benchmarks.compute.compute adds) of one decoder
           layer's steady step, of the nonlinear refresh and of the linear refresh, at the training shape
           and at LLaMA-130M's (8 x 256 tokens); per step = steady + refreshes x their count over the run
           (Compressor.principal_scheduled) / steps, for the run length and for 10,000 steps.

    python -m benchmarks.quality.nonlinear_refresh --part quality --seeds 0 1 2     # resumable: keeps done runs
    python -m benchmarks.quality.nonlinear_refresh --part flops
Writes benchmarks/results/nonlinear_refresh.json.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional

import torch

from prac_dist import PRACConfig
from prac_dist.core.subspace import Compressor

from benchmarks._harness import parser, write_result  # noqa: E402
from benchmarks.quality.convergence import Setup  # noqa: E402

NEVER = 10 ** 9  # an interval no run reaches

# Schedule -> the PRACConfig.paper() fields it sets (every one also redraws Q2 at each Q1 refresh). The last
# column is the linear bases' schedule (principal_schedule; T1 = T2 = 500, exact eigh in every row).
SCHEDULES: Dict[str, dict] = {
    name: dict(nonlinear_principal_update_interval=t1, nonlinear_principal_solver=solver,
               nonlinear_principal_schedule=schedule, principal_schedule=linear)
    for name, t1, solver, schedule, linear in [
        ("T500 exact (the paper)", 500, "exact", "interval", "interval"),
        ("early-dense T500 exact", 500, "exact", "early_dense", "interval"),
        ("early-dense T50 exact", 50, "exact", "early_dense", "interval"),
        ("randomized every 16", 16, "randomized", "interval", "interval"),
        ("randomized every 4", 4, "randomized", "interval", "interval"),
        ("randomized every 2", 2, "randomized", "interval", "interval"),
        ("randomized per step", 1, "randomized", "interval", "interval"),
        ("exact per step", 1, "exact", "interval", "interval"),
        ("randomized per step, linear early-dense", 1, "randomized", "interval", "early_dense"),
    ]
}


def config(schedule: str, seed: int = 0, **extra) -> PRACConfig:
    """PRACConfig.paper() with the schedule's nonlinear refresh (fused loss off: it is exact, see convergence).
    Every schedule sets all its schedule fields, so the table does not depend on paper()'s own."""
    return PRACConfig.paper(**{**SCHEDULES[schedule], "seed": seed, "fused_loss": False, **extra})


def refreshes(cfg: PRACConfig, steps: int, linear: bool = False) -> int:
    """Nonlinear (linear=True: linear) Q1 refreshes in a run of `steps` optimizer steps (the first forward's
    included). A 'drift' schedule counts its interval's only: the rest depends on the data (measured in
    benchmarks.quality.convergence's principal_refreshes)."""
    t1, schedule = ((cfg.principal_update_interval, cfg.principal_schedule) if linear else
                    (cfg.nonlinear_principal_update_interval, cfg.nonlinear_principal_schedule))
    comp = Compressor("count", 8, 1, 1, seed=0, per_rank_random=False, t1=t1, schedule=schedule)
    return 1 + sum(comp.principal_scheduled(s) for s in range(1, steps))


# ---- quality ----------------------------------------------------------------------------------------

def quality(seeds: List[int], schedules: List[str], steps: int, old: Dict) -> Dict:
    from benchmarks.quality.convergence import train_run

    setup = Setup()
    runs: Dict[str, Dict[str, dict]] = old.get("runs", {}) if old.get("steps") == steps else {}
    out = {"steps": steps, "setup": setup.__dict__ if hasattr(setup, "__dict__") else None, "runs": runs}
    for seed in seeds:
        for name in ["baseline"] + schedules:
            if str(seed) in runs.get(name, {}):
                continue
            cfg = None if name == "baseline" else config(name, seed)
            r = train_run(setup, name, seed, steps, cfg=cfg)
            runs.setdefault(name, {})[str(seed)] = {"final_val_loss": r["final_val_loss"], "wall_s": r["wall_s"]}
            print(f"  {name:<26} seed {seed}: val {r['final_val_loss']:.4f} ({r['wall_s']:.0f} s)",
                  file=sys.stderr, flush=True)
            yield out
    out["summary"] = summary(runs)
    yield out


def summary(runs: Dict[str, Dict[str, dict]]) -> Dict[str, dict]:
    base = {s: r["final_val_loss"] for s, r in runs.get("baseline", {}).items()}
    table = {}
    for name, by_seed in runs.items():
        seeds = sorted(s for s in by_seed if s in base)
        if not seeds:
            continue
        vals = [by_seed[s]["final_val_loss"] for s in seeds]
        gaps = [by_seed[s]["final_val_loss"] / base[s] - 1 for s in seeds]
        table[name] = {"seeds": [int(s) for s in seeds], "mean_val_loss": statistics.fmean(vals),
                       "rel_gap_mean": statistics.fmean(vals) / statistics.fmean(base[s] for s in seeds) - 1,
                       "rel_gap_per_seed": gaps}
    return table


# ---- FLOPs ------------------------------------------------------------------------------------------

def _flops_of(shape, cfg: Optional[PRACConfig], batch: int, seq: int, steps: int) -> List[int]:
    """Decoder FLOPs of each of the first `steps` training steps (the first refreshes every basis)."""
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.compute.compute import _split, _train_step, build, decomposition_flops

    model, _ = build(shape, {"prac": cfg} if cfg is not None else {}, torch.float32)
    x = torch.randint(0, shape.vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    out = []
    for _ in range(steps):
        with FlopCounterMode(display=False, depth=None, custom_mapping=decomposition_flops()) as fc:
            _train_step(model, x, cfg is not None)
        out.append(_split(fc.get_flop_counts(), shape.layers)["decoder"])
    return out


def flops(shape_name: str, shape, batch: int, seq: int, run_steps: List[int], schedules: List[str]) -> Dict:
    """Per schedule: steady decoder FLOPs, one nonlinear refresh, and per-step amortised over runs."""
    base = _flops_of(shape, None, batch, seq, 1)[0]
    steady = _flops_of(shape, config("T500 exact (the paper)", nonlinear_principal_update_interval=NEVER),
                       batch, seq, 2)[1]
    linear = _flops_of(shape, config("T500 exact (the paper)", nonlinear_principal_update_interval=NEVER,
                                     principal_update_interval=1, random_update_interval=1), batch, seq, 2)[1] - steady
    rows = {}
    for name in schedules:
        cfg = config(name)
        # Step 2 of a run refreshing the nonlinear bases every step: warm-started where the solver is (the
        # linear bases on 'interval' here: their refreshes are counted with `linear` below).
        each = _flops_of(shape, replace(cfg, nonlinear_principal_update_interval=1, principal_schedule="interval"),
                         batch, seq, 2)[1] - steady
        per_step = {}
        for steps in run_steps:
            amortised = (steady + each * refreshes(cfg, steps) / steps
                         + linear * refreshes(cfg, steps, linear=True) / steps)
            per_step[str(steps)] = {"decoder_flops": amortised, "ratio_to_baseline": amortised / base,
                                    "nonlinear_refreshes": refreshes(cfg, steps),
                                    "linear_refreshes": refreshes(cfg, steps, linear=True)}
        rows[name] = {"nonlinear_refresh_flops": each, "per_step": per_step}
        print(f"  [{shape_name}] {name:<26} refresh {each / 1e6:9.1f} MFLOP  per step "
              + "  ".join(f"{s}: {v['ratio_to_baseline']:.3f}x" for s, v in per_step.items()), file=sys.stderr)
    return {"shape": shape.__dict__ if hasattr(shape, "__dict__") else str(shape), "batch": batch, "seq": seq,
            "baseline_decoder_flops": base, "steady_decoder_flops": steady, "linear_refresh_flops": linear,
            "schedules": rows}


def _layer(setup) -> tuple:
    """One decoder layer of a convergence setup (ratios are per layer), its batch and sequence length; a
    512-token vocabulary keeps the head (not counted) cheap."""
    from prac_dist.models import PRESETS

    shape = replace(PRESETS["llama_130m"], hidden=setup.hidden, layers=1, heads=setup.heads, ffn=setup.ffn,
                    vocab=512)
    return shape, setup.batch, setup.seq_len


def _llama_130m_layer() -> tuple:
    from prac_dist.models import PRESETS

    return replace(PRESETS["llama_130m"], layers=1, vocab=512), 8, 256


FLOP_SHAPES = {
    "training shape (64 wide)": lambda: _layer(Setup()),
    # benchmarks/results/convergence_long.json's setup: 32 wide, ffn 88, batch 8 x 32 tokens.
    "long-run shape (32 wide)": lambda: _layer(Setup(hidden=32, heads=2, ffn=88, batch=8, seq_len=32)),
    "LLaMA-130M layer": _llama_130m_layer,
}


def main(argv=None) -> int:
    ap = parser(__doc__, out="nonlinear_refresh.json")
    ap.add_argument("--part", choices=["quality", "flops"], required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=list(SCHEDULES))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--shapes", nargs="+", default=["training shape (64 wide)", "LLaMA-130M layer"],
                    choices=list(FLOP_SHAPES), help="--part flops: which shapes")
    ap.add_argument("--merge", type=Path, nargs="+", default=[],
                    help="add the quality runs and FLOP counts of these result files (made in parallel) first")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    old = json.loads(args.out.read_text()) if args.out.exists() else {}
    result = {k: old[k] for k in ("quality", "flops") if k in old}  # what this script measured there
    result["schedules"] = SCHEDULES
    for other in args.merge:
        theirs = json.loads(other.read_text())
        result.setdefault("flops", {}).update(theirs.get("flops", {}))
        theirs = theirs.get("quality")
        if theirs is None:
            continue
        mine = result.setdefault("quality", {"steps": theirs["steps"], "setup": theirs["setup"], "runs": {}})
        if mine["steps"] != theirs["steps"]:
            raise SystemExit(f"--merge {other}: {theirs['steps']} steps, {args.out} has {mine['steps']}")
        for name, by_seed in theirs["runs"].items():
            mine["runs"].setdefault(name, {}).update(by_seed)
    t0 = time.perf_counter()
    if args.part == "quality":
        for q in quality(args.seeds, args.schedules, args.steps, result.get("quality", {})):
            result["quality"] = q
            write_result(args.out, "nonlinear_refresh", result, torch_threads=1)
        print(f"\nquality: {args.steps} steps, final validation loss vs the baseline of the same seed")
        for name, e in result["quality"]["summary"].items():
            print(f"{name:<28} seeds {e['seeds']}  val {e['mean_val_loss']:.4f}  gap {100 * e['rel_gap_mean']:+.2f}%")
    else:
        runs = [300, 1000, 10_000]
        result.setdefault("flops", {})
        for name in args.shapes:
            shape, batch, seq = FLOP_SHAPES[name]()
            result["flops"][name] = flops(name, shape, batch, seq, runs, args.schedules)
        write_result(args.out, "nonlinear_refresh", result, torch_threads=1)
    result["seconds"] = time.perf_counter() - t0
    print(f"wrote {args.out} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
