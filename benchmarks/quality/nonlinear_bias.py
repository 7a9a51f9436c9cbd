"""Bias of the gradients through stored norm/SwiGLU inputs, on a trained model's real activations.

A linear layer's PRAC estimate dW~ = dYᵀ Z Qᵀ is linear in the stored Z, so E[dW~] = dW exactly. A norm or
SwiGLU backward is nonlinear in its saved input, so feeding it an unbiased X~ (int8 with stochastic
rounding, PRACConfig(); or the projection Z [Q1 | Q2]ᵀ, paper()) gives E[f(X~)] != f(X) in general: a bias
that does not average out over steps. This benchmark measures it.

The small LLaMA of benchmarks/quality/convergence.py is trained (baseline, --train-steps), then one fixed
held-out batch is pushed through it --draws times per setting; each draw redraws every random part
(int8 roundings, Q2; Q1 stays the one of this batch, as after a refresh). Per decoder layer:

    rms_norm dX      the gradient the input_layernorm / post_attention_layernorm backward returns
    swiglu dX        the gradients of the SwiGLU inputs (gate and up projections' outputs)
    norm dW          the RMSNorm weights' gradients
    linear dW        q_proj and gate_proj weight gradients (the projection's own estimate)

and for each, against the exact gradient g of the uncompressed model:

    bias   = ‖mean_k g~_k - g‖ / ‖g‖
    se     = sqrt(Σ_k ‖g~_k - mean‖² / (K (K - 1))) / ‖g‖   (the Monte-Carlo floor of bias)
    noise  = sqrt(Σ_k ‖g~_k - mean‖² / (K - 1)) / ‖g‖   (one draw's deviation: the noise a step sees)
    bias_excess = sqrt(max(0, bias² - se²))             (bias with the Monte-Carlo floor removed)

An unbiased estimator gives bias ≈ se (ratio ≈ 1); ratio >> 1 means a detectable bias.

    python -m benchmarks.quality.nonlinear_bias            # writes benchmarks/results/nonlinear_bias.json
    python -m benchmarks.quality.nonlinear_bias --train-steps 5 --draws 4 --out /tmp/b.json   # smoke
"""

from __future__ import annotations

import math
import sys
import time
from typing import Dict, List, Optional

import torch

import prac_dist
from prac_dist import PRACConfig

from benchmarks._harness import parser, write_result  # noqa: E402
from benchmarks.quality.convergence import Setup, corpus, trained_baseline  # noqa: E402

NEVER = 10 ** 9
# Q1 fixed from this batch (as after a refresh), every random part redrawn at each draw.
DRAWS = dict(principal_update_interval=NEVER, random_update_interval=1, nonlinear_principal_update_interval=NEVER,
             fused_loss=False)
SETTINGS = {
    "PRACConfig() (int8 norm/SwiGLU inputs)": lambda seed: PRACConfig(seed=seed, **DRAWS),
    "paper() (projected norm/SwiGLU inputs)": lambda seed: PRACConfig.paper(seed=seed, **DRAWS),
    "lean() (norm/SwiGLU inputs exact)": lambda seed: PRACConfig.lean(seed=seed, **DRAWS),
}


def _one_pass(model, ids: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Gradients of one forward/backward: each norm's and SwiGLU's input gradient, norm and linear dW."""
    captured: Dict[str, torch.Tensor] = {}
    handles = []

    def keep(name):
        return lambda g: captured.__setitem__(name, g.detach().clone())

    def tap_input(name):
        # A view only the norm reads: its gradient is the norm's own dX, not the residual stream's total.
        def pre(module, args):
            x = args[0].view_as(args[0])
            x.register_hook(keep(name))
            return (x,) + tuple(args[1:])
        return pre

    def tap_output(name):
        def post(module, args, out):
            out.register_hook(keep(name))
        return post

    for i, layer in enumerate(model.model.layers):
        for norm in ("input_layernorm", "post_attention_layernorm"):
            handles.append(getattr(layer, norm).register_forward_pre_hook(tap_input(f"{i}.{norm} dX")))
        for proj in ("gate_proj", "up_proj"):
            handles.append(getattr(layer.mlp, proj).register_forward_hook(tap_output(f"{i}.swiglu dX ({proj})")))
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=ids).loss.backward()
    for h in handles:
        h.remove()
    for i, layer in enumerate(model.model.layers):
        for norm in ("input_layernorm", "post_attention_layernorm"):
            captured[f"{i}.{norm} dW"] = getattr(layer, norm).weight.grad.detach().clone()
        captured[f"{i}.q_proj dW"] = layer.self_attn.q_proj.weight.grad.detach().clone()
        captured[f"{i}.gate_proj dW"] = layer.mlp.gate_proj.weight.grad.detach().clone()
    return captured


def measure(model, ids, cfg: PRACConfig, draws: int, exact: Dict[str, torch.Tensor]) -> Dict[str, dict]:
    prac_dist.apply_prac(model, cfg)
    try:
        total = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in exact.items()}
        samples: List[Dict[str, torch.Tensor]] = []
        for _ in range(draws):
            g = _one_pass(model, ids)
            prac_dist.step(model)  # redraw Q2 (and the rounding keys advance on their own)
            samples.append(g)
            for k in exact:
                total[k] += g[k].double()
        rows = {}
        for k, g in exact.items():
            mean = total[k] / draws
            spread = sum(float((s[k].double() - mean).pow(2).sum()) for s in samples) / (draws - 1)
            norm = float(g.double().norm())
            bias = float((mean - g.double()).norm()) / norm
            se = math.sqrt(spread / draws) / norm
            # No spread (an exact gradient, lean()'s norm/SwiGLU ones): the ratio is undefined, not infinite.
            rows[k] = {"bias": bias, "se": se, "noise": math.sqrt(spread) / norm,
                       "bias_over_se": bias / se if se > 0 else None,
                       "bias_excess": math.sqrt(max(0.0, bias ** 2 - se ** 2))}
        return dict(sorted(rows.items(), key=lambda kv: (int(kv[0].split(".")[0]), kv[0].split(" ")[-1], kv[0])))
    finally:
        prac_dist.remove_prac(model)


def print_table(per: Dict[str, Dict[str, dict]], draws: int) -> None:
    print(f"\nrelative to ‖exact‖, {draws} draws: bias = ‖mean - exact‖ (se = its Monte-Carlo floor), "
          f"noise = one draw's deviation, excess = bias with the floor removed")
    for setting, rows in per.items():
        print(f"\n{setting}")
        print(f"{'gradient':<34}{'bias':>9}{'se':>9}{'bias/se':>9}{'excess':>9}{'noise':>9}")
        for k, r in rows.items():
            ratio = "-" if r["bias_over_se"] is None else f"{r['bias_over_se']:.2f}"
            print(f"{k:<34}{r['bias']:>9.4f}{r['se']:>9.4f}{ratio:>9}{r['bias_excess']:>9.4f}{r['noise']:>9.4f}")


def main(argv: Optional[List[str]] = None) -> int:
    p = parser(__doc__, out="nonlinear_bias.json", seed=0, batch=16, batch_help="held-out sequences in the measured batch")
    p.add_argument("--train-steps", type=int, default=300, help="baseline training steps before measuring")
    p.add_argument("--draws", type=int, default=64, help="gradient draws per setting")
    args = p.parse_args(argv)
    if args.draws < 2:
        p.error(f"--draws={args.draws}: accepted is an integer >= 2 (the spread needs two draws)")
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    t0 = time.perf_counter()
    setup = Setup()
    model, run = trained_baseline(setup, args.seed, args.train_steps)
    model.train()
    _, val = corpus(setup.vocab, setup.seq_len)
    ids = val[-args.batch:]  # held-out text the model was never evaluated or trained on
    exact = _one_pass(model, ids)
    per = {name: measure(model, ids, make(args.seed), args.draws, exact) for name, make in SETTINGS.items()}
    print_table(per, args.draws)
    write_result(args.out, "nonlinear_bias", {
        "command": "python -m benchmarks.quality.nonlinear_bias " + " ".join(argv if argv is not None else sys.argv[1:]),
        "setup": setup.__dict__, "trained_steps": args.train_steps, "trained_val_loss": run["final_val_loss"],
        "draws": args.draws, "batch": [args.batch, setup.seq_len], "settings": per,
        "seconds": time.perf_counter() - t0}, torch_threads=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
