"""Bytes saved for backward by `model(input_ids=x, labels=x)`, loss included: HF vs fused loss vs PRAC.

Default: the full LLaMA-130M shape (hidden 768, 12 layers, 12 heads, ffn 2048,
vocab 32000, SDPA, bf16), batch 4 x 256. Counted with prac_dist.memory.measure_saved_bytes
(each storage once, parameters excluded) on CPU: what autograd keeps does not depend on the device.

    python -m benchmarks.memory.fused_loss_memory [--model llama_130m] [--batch 4] [--seq 256]

Prints a table and writes benchmarks/results/fused_loss_memory.json.
"""

from __future__ import annotations

import sys
import time

import torch

from prac_dist import PRACConfig, apply_prac, remove_prac
from prac_dist.loss import install_fused_loss, uninstall_fused_loss
from prac_dist.memory import measure_saved_bytes
from prac_dist.models.shapes import PRESETS, build_model

from benchmarks._harness import parser, write_result  # noqa: E402



def _measure(model, x):
    report = measure_saved_bytes(lambda: model(input_ids=x, labels=x).loss, model)
    loss = float(report.output.detach().float())
    report.output = None  # drop the graph before the next measurement
    return report, loss


def run(model_name: str, batch: int, seq: int, dtype: str, seed: int):
    torch.manual_seed(seed)
    shape = PRESETS[model_name]
    model = build_model(shape, dtype=getattr(torch, dtype))
    x = torch.randint(0, shape.vocab, (batch, seq))
    rows = []

    def record(name, report, loss):
        rows.append({"setting": name, "saved_bytes": report.total_bytes, "loss": loss,
                     "by_module_type": report.by_module_type})

    record("HF baseline", *_measure(model, x))
    assert install_fused_loss(model)
    record("fused loss only", *_measure(model, x))
    uninstall_fused_loss(model)
    apply_prac(model, PRACConfig(fused_loss=False))
    record("PRAC defaults, fused_loss=False", *_measure(model, x))
    remove_prac(model)
    apply_prac(model, PRACConfig())  # the defaults: fused_loss=True
    record("PRAC defaults (fused loss)", *_measure(model, x))
    remove_prac(model)
    base = rows[0]["saved_bytes"]
    for r in rows:
        r["ratio_to_baseline"] = r["saved_bytes"] / base
    return rows


def main(argv=None) -> int:
    ap = parser(__doc__, out="fused_loss_memory.json", seed=0, batch=4, seq=256)
    ap.add_argument("--model", default="llama_130m", choices=sorted(PRESETS))
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = ap.parse_args(argv)
    t0 = time.time()
    rows = run(args.model, args.batch, args.seq, args.dtype, args.seed)
    print(f"{args.model}, batch {args.batch} x {args.seq}, {args.dtype}: bytes saved for backward, loss included")
    print(f"{'setting':<34} {'MiB':>9} {'vs HF':>7} {'loss':>9}")
    for r in rows:
        print(f"{r['setting']:<34} {r['saved_bytes'] / 2**20:>9.1f} {r['ratio_to_baseline']:>7.3f} {r['loss']:>9.4f}")
    result = {
        "model": args.model, "shape": PRESETS[args.model].__dict__, "batch": args.batch, "seq": args.seq,
        "dtype": args.dtype, "attn_implementation": "sdpa", "rows": rows,
        "target": "PRAC defaults (fused loss) <= 0.40 x HF baseline",
        "meets_target": rows[-1]["ratio_to_baseline"] <= 0.40,
        "seconds": round(time.time() - t0, 1),
    }
    out = write_result(args.out, "fused_loss_memory", result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
