"""Bytes the decoder layers save for backward, per model family: unpatched vs apply_prac, bf16.

Thirteen Hugging Face families (the model registry's five, patched from the registry, and eight patched
by structural discovery), random weights, 2 layers of width --width (4 heads, ffn 2x), batch
--batch x --seq tokens; and four decoders outside Hugging Face, patched by discovery from their
forward's signature (benchmarks/_tiny_models.py): a nanoGPT-style GPT (width --width, ffn 4x),
LitGPT's GPT with a LLaMA-style Config (width --width) and torchtitan's Llama3 and Qwen3 debug models
(their own width 256, first 2 blocks, SDPA inner attention). Counted with prac_dist.memory.measure_saved_bytes (each storage once,
parameters excluded, only tensors saved inside the decoder blocks) on CPU: what autograd keeps does
not depend on the device. Also lists what discovery did: linear groups compressed / left exact, lean
sites installed, modules left alone.

    python -m benchmarks.memory.family_memory [--width 256] [--batch 2] [--seq 256] [--families llama gemma2 ...]

Prints a table and writes benchmarks/results/family_memory.json.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import torch



from benchmarks._harness import parser, write_result  # noqa: E402
from benchmarks._tiny_models import FAMILIES, MOE, OUTSIDE_HF, batch, build, build_outside  # noqa: E402

from prac_dist import PRACConfig, apply_prac  # noqa: E402
from prac_dist.fsdp.parallelize import find_decoder_layers  # noqa: E402
from prac_dist.memory import measure_saved_bytes  # noqa: E402
from prac_dist.models import ARCHITECTURES  # noqa: E402
from prac_dist.patching.apply import get_prac_state  # noqa: E402

SETTINGS = {"linear_only": PRACConfig(compress_nonlinear=False), "default": PRACConfig()}


def _bytes(model, inputs) -> int:
    return measure_saved_bytes(lambda: model(**inputs).loss, model, scope=find_decoder_layers(model)).total_bytes


# Bounds the decoders outside Hugging Face must meet at PRACConfig() (HF families: 0.75, MoE 1.0).
OUTSIDE_LIMIT = {"nanogpt": 0.55}


def _builder(family: str, width: int, batch_size: int, seq: int):
    """() -> (model, saved bytes of one forward of the decoder blocks) for a family."""
    if family in OUTSIDE_HF:
        ids = torch.randint(0, 256, (batch_size, seq + 1), generator=torch.Generator().manual_seed(1))

        def make():
            model, loss, blocks = build_outside(family, torch.bfloat16, width=width)
            return model, lambda m: measure_saved_bytes(lambda: loss(m, ids), m, scope=blocks).total_bytes
        return make

    def make():
        model = build(family, torch.bfloat16, width=width)
        inputs = batch(model, batch_size, seq)
        return model, lambda m: _bytes(m, inputs)
    return make


def measure(family: str, width: int, batch_size: int, seq: int) -> dict:
    make = _builder(family, width, batch_size, seq)
    model, count = make()
    row = {"family": family, "patched_by": "registry" if family in ARCHITECTURES else "discovery",
           "unpatched_bytes": count(model)}
    for label, cfg in SETTINGS.items():
        model, count = make()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            apply_prac(model, cfg)
        row[f"{label}_bytes"] = count(model)
        row[f"{label}_ratio"] = round(row[f"{label}_bytes"] / row["unpatched_bytes"], 4)
        row[f"{label}_warnings"] = [str(w.message) for w in caught if "apply_prac" in str(w.message)]
        found = get_prac_state(model).discovery
        if found is not None and label == "default":
            row["groups"] = len(found.groups)
            row["groups_left_exact"] = sum(g.kept_by is not None for g in found.groups)
            row["sites"] = sorted({s.kind for s in found.sites})
            row["left_alone"] = len(found.left_alone)
    row["limit"] = OUTSIDE_LIMIT.get(family, 0.45) if family in OUTSIDE_HF else 1.0 if family in MOE else 0.75
    return row


def main(argv=None) -> int:
    ap = parser(__doc__, out="family_memory.json", batch=2, seq=256)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--families", nargs="+", default=list(FAMILIES + OUTSIDE_HF), choices=list(FAMILIES + OUTSIDE_HF))
    args = ap.parse_args(argv)
    start = time.time()
    rows = [measure(f, args.width, args.batch, args.seq) for f in args.families]
    print(f"decoder bytes saved for backward, bf16, width {args.width}, {args.batch} x {args.seq} tokens "
          f"(ratio to unpatched; lower is better)")
    print(f"{'family':<12} {'patched by':<10} {'unpatched MiB':>13} {'linear only':>11} {'default':>8} "
          f"{'limit':>5}  sites")
    for r in rows:
        print(f"{r['family']:<12} {r['patched_by']:<10} {r['unpatched_bytes'] / 2**20:>13.2f} "
              f"{r['linear_only_ratio']:>11.3f} {r['default_ratio']:>8.3f} {r['limit']:>5.2f}  "
              f"{','.join(r.get('sites', []))}")
    out = write_result(Path(args.out), "family_memory",
                       {"width": args.width, "batch": args.batch, "seq": args.seq, "dtype": "bfloat16",
                        "seconds": round(time.time() - start, 1), "rows": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
