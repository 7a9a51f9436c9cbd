"""Weight-gradient quality on real activations of a trained model: PRAC vs pure random vs principal-only.

The small LLaMA of benchmarks/quality/convergence.py is trained on the bundled WikiText-2 (or loaded
from --checkpoint), then one fixed held-out batch is pushed through it with each estimator:

    prac            r1 = 0.3 n principal + r2 = 0.3 n random directions (unbiased)
    random_only     r2 = 0.6 n random directions, same stored size (CompAct/RSO style, unbiased)
    principal_only  r1 = 0.6 n principal directions, same stored size (deterministic, biased)
    prac_min_variance, prac_energy
                    PRAC with adaptive_rank: r1 + r2 = 0.6 n as above (same stored size), the split
                    chosen per layer from this batch's spectrum (PRACConfig.adaptive_rank)
    prac_global     adaptive_rank='global': the same total r1 + r2 over the layers (same stored
                    bytes), moved between layers from this batch's spectra, then split per layer

The principal basis Q1 is computed once from this batch (as at a refresh) and kept; Q2 is
redrawn for each of --draws forward/backward passes. Norm and SwiGLU inputs are NOT compressed
here (compress_nonlinear=False), so every linear layer receives the exact upstream gradient dY and
the numbers measure that layer's own estimator. Per compressed linear layer:

    variance   = 1/(K-1) Σ_k ‖dW~_k - mean_k dW~_k‖²_F   (trace of the estimator's covariance)
    mse        = 1/K Σ_k ‖dW~_k - dW‖²_F                  (dW: the uncompressed model's gradient)
    bias       = ‖mean_k dW~_k - dW‖_F                    (principal-only: its whole error; for the
                 unbiased ones only Monte-Carlo noise, about sqrt(variance / K))
and relative values divided by ‖dW‖²_F (‖dW‖_F for bias).

    python -m benchmarks.quality.grad_quality                      # the committed run (a few minutes)
    python -m benchmarks.quality.grad_quality --train-steps 5 --draws 4 --out /tmp/g.json   # smoke
Prints a table, writes benchmarks/results/grad_quality.json.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Optional

import torch

from benchmarks._harness import parser, write_result  # noqa: E402
from benchmarks.quality.convergence import Setup, build_model, corpus, trained_baseline  # noqa: E402

import prac_dist  # noqa: E402
from prac_dist import PRACConfig  # noqa: E402
from prac_dist.patching.modules import PRACLinear  # noqa: E402

# name -> (principal_ratio, random_ratio, adaptive_rank). All project every linear input at 16 bits ("prac" is
# then PRACConfig.paper()'s linear estimator), except "defaults": PRACConfig() as shipped (linear_storage='auto':
# q/k/v and gate/up projected with 8-bit Z, down_proj's input itself in int8).
ESTIMATORS = {"prac": (0.3, 0.3, "off"), "random_only": (0.0, 0.6, "off"), "principal_only": (0.6, 0.0, "off"),
              "prac_min_variance": (0.3, 0.3, "min_variance"), "prac_energy": (0.3, 0.3, "energy"),
              "prac_global": (0.3, 0.3, "global"), "defaults": (0.3, 0.3, "off")}
PROJECTED_16BIT = dict(linear_storage="project", storage_bits=16)


def _grads(model, ids: torch.Tensor, names: List[str]) -> Dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=ids).loss.backward()
    params = dict(model.named_parameters())
    return {n: params[n].grad.detach().double().clone() for n in names}


def measure(model, ids: torch.Tensor, ratios, draws: int, seed: int, exact: Dict[str, torch.Tensor],
            storage: Optional[Dict] = None) -> Dict:
    """Apply PRAC with `ratios`, draw `draws` gradients (Q1 fixed, Q2 redrawn each time), remove PRAC."""
    cfg = PRACConfig(principal_ratio=ratios[0], random_ratio=ratios[1], adaptive_rank=ratios[2],
                     compress_nonlinear=False, fused_loss=False, seed=seed,
                     **(PROJECTED_16BIT if storage is None else storage))
    prac_dist.apply_prac(model, cfg)
    try:
        layers = {name + ".weight": m for name, m in model.named_modules() if isinstance(m, PRACLinear)}
        comps = {id(m.prac_compressor): m.prac_compressor for m in layers.values()}.values()
        names = sorted(layers)
        if ratios[2] == "global":  # one refresh to measure the spectra, step() moves the budgets
            _grads(model, ids, names)
            prac_dist.step(model)
        # Stochastic rounding (int8 X, 8-bit Z) is random too.
        random = ratios[1] > 0 or any(not c.projects or c.storage_bits == 8 for c in comps)
        k = draws if random else 2  # principal-only is deterministic: two passes check that it is
        total = {n: torch.zeros_like(exact[n]) for n in names}
        total_sq = {n: 0.0 for n in names}
        mse = {n: 0.0 for n in names}
        samples = []
        for i in range(k):
            if i > 0:
                for c in comps:  # Q2 redrawn from the next seed; Q1 kept (principal_due stays False)
                    c.random_due = True
            g = _grads(model, ids, names)
            for n in names:
                total[n] += g[n]
                total_sq[n] += float((g[n] ** 2).sum())
                mse[n] += float(((g[n] - exact[n]) ** 2).sum())
            if not random:
                samples.append(g)
        out = {}
        for n in names:
            mean = total[n] / k
            # Σ‖g_k - ḡ‖² = Σ‖g_k‖² - K‖ḡ‖²; clamp the float rounding of the deterministic case at 0
            var = max(0.0, (total_sq[n] - k * float((mean ** 2).sum())) / (k - 1))
            if not random:
                var = float(((samples[0][n] - samples[1][n]) ** 2).sum()) / 2
            norm2 = float((exact[n] ** 2).sum())
            bias = float(((mean - exact[n]) ** 2).sum()) ** 0.5
            c = layers[n].prac_compressor
            out[n] = {"n": c.n, "r1": c.r1, "r2": c.r2, "draws": k, "grad_norm2": norm2,
                      "variance": var,
                      "rel_variance": var / norm2, "mse": mse[n] / k, "rel_mse": mse[n] / k / norm2,
                      "bias": bias, "rel_bias": bias / norm2 ** 0.5,
                      "principal_energy": None if c.energy is None else float(c.energy), "storage": c.storage}
        return out
    finally:
        prac_dist.remove_prac(model)


def summarize(per: Dict[str, Dict[str, Dict]]) -> Dict:
    names = sorted(per["prac"])
    ratio = {n: per["prac"][n]["variance"] / per["random_only"][n]["variance"] for n in names}
    tot = {e: sum(per[e][n]["variance"] for n in names) for e in per}
    mse = {e: sum(per[e][n]["mse"] for n in names) for e in per}
    norm2 = sum(per["prac"][n]["grad_norm2"] for n in names)
    return {
        "variance_ratio_prac_over_random": ratio,
        "overall": {
            "variance_ratio_prac_over_random": tot["prac"] / tot["random_only"],
            "geomean_layer_ratio": math.exp(statistics.fmean(math.log(r) for r in ratio.values())),
            "max_layer_ratio": max(ratio.values()),
            "layers_where_prac_below_random": sum(r < 1 for r in ratio.values()),
            "layers": len(names),
            "rel_variance": {e: tot[e] / norm2 for e in per},
            "rel_mse": {e: mse[e] / norm2 for e in per},
        },
    }


def print_table(per: Dict[str, Dict[str, Dict]], summary: Dict) -> None:
    print(f"\n{'layer (weight)':<40}{'n':>5}{'PRAC var':>11}{'random var':>12}{'ratio':>8}{'princ. bias²':>14}")
    print(f"{'':<40}{'':>5}{'(rel. to ‖dW‖²)':>23}{'':>8}{'(rel.)':>14}")
    for n in sorted(per["prac"]):
        p, r, b = per["prac"][n], per["random_only"][n], per["principal_only"][n]
        print(f"{n:<40}{p['n']:>5}{p['rel_variance']:>11.4f}{r['rel_variance']:>12.4f}"
              f"{summary['variance_ratio_prac_over_random'][n]:>8.3f}{b['rel_bias'] ** 2:>14.4f}")
    o = summary["overall"]
    print(f"\noverall variance ratio PRAC / random (sum over layers): {o['variance_ratio_prac_over_random']:.3f}; "
          f"geometric mean of layer ratios {o['geomean_layer_ratio']:.3f}; max {o['max_layer_ratio']:.3f}; "
          f"PRAC below random in {o['layers_where_prac_below_random']}/{o['layers']} layers")
    print("relative MSE (sum over layers / Σ‖dW‖²): " +
          ", ".join(f"{e} {v:.4f}" for e, v in o["rel_mse"].items()))
    print("relative variance (same sums): " + ", ".join(f"{e} {v:.4f}" for e, v in o["rel_variance"].items()))
    for e in ("prac_min_variance", "prac_energy", "prac_global"):
        print(f"{e}: r1 per layer " + " ".join(str(per[e][n]["r1"]) for n in sorted(per[e]))
              + f" (fixed: {' '.join(str(per['prac'][n]['r1']) for n in sorted(per['prac']))}); r1 + r2 "
              + " ".join(str(per[e][n]["r1"] + per[e][n]["r2"]) for n in sorted(per[e])))


def main(argv: Optional[List[str]] = None) -> int:
    p = parser(__doc__, out="grad_quality.json", seed=0, threads=1, batch=16,
               batch_help="held-out sequences in the fixed batch")
    p.add_argument("--checkpoint", type=Path, help="weights saved by convergence.py --save-model (else: train)")
    p.add_argument("--train-steps", type=int, default=300, help="baseline training steps when no --checkpoint")
    p.add_argument("--draws", type=int, default=64, help="gradient draws per unbiased estimator")
    args = p.parse_args(argv)
    if args.draws < 2:
        p.error(f"--draws={args.draws}: accepted is an integer >= 2 (a variance needs two draws)")
    if args.train_steps < 1:
        p.error(f"--train-steps={args.train_steps}: accepted is an integer >= 1")
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    t0 = time.perf_counter()
    if args.checkpoint is not None:
        if not args.checkpoint.is_file():
            p.error(f"--checkpoint {args.checkpoint}: no such file")
        saved = torch.load(args.checkpoint, weights_only=True)
        setup, steps = Setup(**saved["setup"]), saved["steps"]
        model = build_model(setup, saved["seed"])
        model.load_state_dict(saved["state_dict"])
        trained = {"checkpoint": str(args.checkpoint), "steps": steps}
    else:
        setup = Setup()
        model, run = trained_baseline(setup, args.seed, args.train_steps)
        trained = {"steps": args.train_steps, "final_val_loss": run["final_val_loss"], "train_wall_s": run["wall_s"]}
    t_train = time.perf_counter() - t0
    _, val = corpus(setup.vocab, setup.seq_len)
    ids = val[-args.batch:]  # held-out text the model was never evaluated or trained on
    model.train()
    names = None
    per: Dict[str, Dict[str, Dict]] = {}
    for est, ratios in ESTIMATORS.items():
        if names is None:  # the exact gradients of the same layers PRAC compresses
            probe = prac_dist.apply_prac(model, PRACConfig(compress_nonlinear=False, fused_loss=False))
            names = sorted(n + ".weight" for n, m in probe.named_modules() if isinstance(m, PRACLinear))
            prac_dist.remove_prac(model)
            exact = _grads(model, ids, names)
        storage = {} if est == "defaults" else None  # {}: PRACConfig's own storage defaults
        per[est] = measure(model, ids, ratios, args.draws, args.seed, exact, storage=storage)
    summary = summarize(per)
    print_table(per, summary)
    result = {"setup": asdict(setup), "model": trained, "batch_sequences": args.batch,
              "draws": args.draws, "estimators": {k: list(v) for k, v in ESTIMATORS.items()},
              "compress_nonlinear": False, "per_layer": per, **summary,
              "wall_s": {"train": t_train, "total": time.perf_counter() - t0}}
    write_result(args.out, "grad_quality", result)
    print(f"\nwrote {args.out} ({result['wall_s']['total']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
