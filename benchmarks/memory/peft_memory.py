"""Bytes saved for backward by the decoder under PEFT LoRA: plain PEFT vs PEFT + PRAC.

A LoRA layer's frozen base saves no input; its A matrix saves the whole X (dA = s (Bᵀ dY)ᵀ X),
and PEFT casts X to the adapter's float32 first, so on a bf16 model q, k and v each keep their
own float32 copy. PRAC stores one shared Z per input instead (prac_dist/patching/lora.py).
Measured with prac_dist.memory.measure_saved_bytes on the LLaMA-130M shape (bf16, sdpa), LoRA
r=16 on all seven linears (PEFT's float32 adapters), 2 decoder layers, batch 4 x 256.

    python -m benchmarks.memory.peft_memory       # writes benchmarks/results/peft_memory.json
"""

from __future__ import annotations

import copy

import torch

from prac_dist import PRACConfig, apply_prac
from prac_dist.memory import measure_saved_bytes
from prac_dist.train.models import PRESETS

from benchmarks._harness import llama, parser, shape, write_result  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SETTINGS = {
    "peft": None,
    "peft_prac_linear_only": PRACConfig(compress_nonlinear=False, fused_loss=False, principal_solver="randomized"),
    "peft_prac_defaults": PRACConfig(fused_loss=False, principal_solver="randomized"),
}


def build(preset: str, layers: int, dropout: float):
    from peft import LoraConfig, get_peft_model

    p = shape(preset, layers=layers)
    torch.manual_seed(0)
    model = llama(p).to(torch.bfloat16)
    return get_peft_model(model, LoraConfig(r=16, target_modules=TARGETS, lora_dropout=dropout)), p


def measure(preset: str, layers: int, batch: int, seq: int, dropout: float) -> dict:
    base, p = build(preset, layers, dropout)
    x = torch.randint(0, p.vocab, (batch, seq))
    out = {}
    for name, cfg in SETTINGS.items():
        model = copy.deepcopy(base)
        if cfg is not None:
            apply_prac(model, cfg)
        decoder = list(model.base_model.model.model.layers)
        report = measure_saved_bytes(lambda: model(input_ids=x).logits, model, scope=decoder)
        out[name] = {"total_bytes": report.total_bytes, "by_module_type": report.by_module_type}
    for name in SETTINGS:
        out[name]["vs_peft"] = out[name]["total_bytes"] / out["peft"]["total_bytes"]
    return out


def main(argv=None) -> None:
    ap = parser(__doc__, out="peft_memory.json", batch=4, seq=256)
    ap.add_argument("--preset", default="llama_130m", choices=sorted(PRESETS))
    ap.add_argument("--layers", type=int, default=2, help="decoder layers built and measured")
    args = ap.parse_args(argv)
    results = {}
    for dropout in (0.0, 0.05):
        results[f"lora_dropout_{dropout}"] = measure(args.preset, args.layers, args.batch, args.seq, dropout)
    print(f"{'setting':<24} {'dropout':>8} {'MiB':>9} {'vs PEFT':>8}")
    for key, rows in results.items():
        for name, row in rows.items():
            print(f"{name:<24} {key.rsplit('_', 1)[1]:>8} {row['total_bytes'] / 2**20:>9.2f} {row['vs_peft']:>8.3f}")
    fields = {"preset": args.preset, "layers_measured": args.layers, "batch": args.batch, "seq": args.seq,
              "lora": {"r": 16, "targets": TARGETS, "adapter_dtype": "float32 (PEFT default)"},
              "model_dtype": "bfloat16", "results": results}
    write_result(args.out, "peft_memory", fields)


if __name__ == "__main__":
    main()
