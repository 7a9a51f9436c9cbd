"""Bytes saved for backward by the decoder, per module type: baseline vs PRAC settings.

Measured with prac_dist.memory.measure_saved_bytes (a saved-tensor hook; parameters not counted,
each storage once) on HF LlamaForCausalLM with the paper's shapes, bf16, sdpa attention, at full
depth. Saved bytes scale linearly with tokens, so a small CPU batch gives the per-token numbers;
`units` is bytes / (token * layer * 2d), the unit of docs/PRAC.md.

    python -m benchmarks.memory.memory                      # 130M, 350M, 1B; writes benchmarks/results/memory.json
    python -m benchmarks.memory.memory --models llama_130m --batch 4 --seq 256
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch

from prac_dist import PRACConfig, apply_prac
from prac_dist.memory import measure_saved_bytes
from prac_dist.train.models import PRESETS

from benchmarks._harness import llama, parser, write_result  # noqa: E402

SETTINGS = {
    "baseline": None,
    # Every input projected, as the labels say (PRACConfig() stores some inputs in int8 instead).
    "prac_linear_only": PRACConfig.paper(compress_nonlinear=False, fused_loss=False, principal_solver="randomized"),
    "prac_paper_defaults": PRACConfig.paper(fused_loss=False, principal_solver="randomized"),
    "prac_defaults_int8": PRACConfig.paper(fused_loss=False, principal_solver="randomized", storage_bits=8),
}


def build(name: str, layers: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return llama(name, layers=layers).to(torch.bfloat16)


def measure(name: str, batch: int, seq: int, layers: int = 0) -> dict:
    p = PRESETS[name]
    layers = layers or p.layers
    base = build(name, layers)
    x = torch.randint(0, p.vocab, (batch, seq))
    out = {"shape": {"hidden": p.hidden, "layers": p.layers, "ffn": p.ffn, "heads": p.heads},
           "layers_measured": layers, "settings": {}}
    for setting, cfg in SETTINGS.items():
        model = base if cfg is None else apply_prac(copy.deepcopy(base), cfg)
        t0 = time.perf_counter()
        report = measure_saved_bytes(lambda: model(input_ids=x).logits, model, scope=list(model.model.layers))
        units = report.total_bytes / (batch * seq * layers * 2 * p.hidden)
        out["settings"][setting] = {"total_bytes": report.total_bytes, "by_module_type": report.by_module_type,
                                    "units_per_token_layer": units, "seconds": time.perf_counter() - t0}
        del model
    baseline = out["settings"]["baseline"]["total_bytes"]
    for s in out["settings"].values():
        s["ratio_to_baseline"] = s["total_bytes"] / baseline
    return out


def main(argv=None) -> None:
    ap = parser(__doc__, out="memory.json", batch=1, seq=256)
    ap.add_argument("--models", nargs="+", default=["llama_130m", "llama_350m", "llama_1b"], choices=sorted(PRESETS))
    ap.add_argument("--layers", type=int, default=0,
                    help="decoder layers to build (0 = the preset's depth). Bytes per layer do not depend on "
                         "depth (130M: 1 layer and 12 layers give the same ratios), so 1B fits a CPU budget.")
    args = ap.parse_args(argv)
    results = {"batch": args.batch, "seq": args.seq, "dtype": "bfloat16", "attention": "sdpa", "models": {}}
    if Path(args.out).exists():  # runs at different depths accumulate into one results file
        results["models"] = json.loads(Path(args.out).read_text()).get("models", {})
    print(f"{'model':<11} {'layers':>6} {'setting':<20} {'MiB/seq':>9} {'units':>6} {'ratio':>6}")
    for name in args.models:
        res = measure(name, args.batch, args.seq, args.layers)
        results["models"][name] = res
        for setting, r in res["settings"].items():
            print(f"{name:<11} {res['layers_measured']:>6} {setting:<20} {r['total_bytes'] / 2**20 / args.batch:>9.1f} "
                  f"{r['units_per_token_layer']:>6.2f} {r['ratio_to_baseline']:>6.3f}")
    write_result(args.out, "memory", results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
