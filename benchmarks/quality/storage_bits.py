"""8-bit vs 16-bit storage of the PRAC activations Z: stored bytes and training loss.

    python -m benchmarks.quality.storage_bits [--steps 150] [--hidden 128]

1. Bytes saved for backward (prac_dist.memory.measure_saved_bytes, bf16 model, one
   forward + loss) and the bytes of Z alone (tensors the core marks compressed).
2. Two training runs of a small LLaMA on WikiText-2 (same seed, same data order, same
   bases), storage_bits=16 and 8, default PRAC ratios with compress_nonlinear;
   validation loss on held-out WikiText-2 test text along the way. GPT-2 token ids are
   folded into a 2048-word vocabulary so a CPU run stays short.

Prints tables and writes benchmarks/results/storage_bits.json.
"""

from __future__ import annotations

import sys
import time

import torch

from benchmarks._harness import llama, parser, write_result  # noqa: E402
from benchmarks._real_activations import wikitext_tokens  # noqa: E402

from prac_dist import PRACConfig, apply_prac, hook_optimizer  # noqa: E402
from prac_dist.core import is_compressed_activation  # noqa: E402
from prac_dist.memory import measure_saved_bytes  # noqa: E402

VOCAB = 2048


def _model(hidden, layers, dtype=torch.float32):
    from prac_dist.models import ModelShape

    torch.manual_seed(0)
    # 32-wide heads, the MLP at 8/3 of the width (a multiple of 4), the tokens folded into VOCAB.
    return llama(ModelShape("llama", hidden=hidden, layers=layers, heads=max(1, hidden // 32),
                            ffn=int(hidden * 8 / 3) // 4 * 4, vocab=VOCAB, max_positions=1024)).to(dtype)


def stored_bytes(hidden, layers, seq, batch):
    ids = torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(0))
    out = {}
    for bits in (16, 8):
        model = _model(hidden, layers, torch.bfloat16)
        apply_prac(model, PRACConfig.paper(storage_bits=bits, fused_loss=False))
        run = lambda: model(input_ids=ids, labels=ids).loss  # noqa: E731
        seen, z = set(), 0

        def pack(t):
            nonlocal z
            key = t.untyped_storage().data_ptr()
            if is_compressed_activation(t) and key not in seen:
                seen.add(key)
                z += t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            run()
        out[bits] = {"z_bytes": z, "total_saved_bytes": measure_saved_bytes(run, model).total_bytes}
    return out


def train(bits, hidden, layers, steps, seq, batch, train_ids, val_ids, eval_every):
    model = _model(hidden, layers)
    apply_prac(model, PRACConfig(storage_bits=bits, fused_loss=False, principal_update_interval=50,
                                 random_update_interval=50, linear_storage="project", nonlinear_storage="project"))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    hook_optimizer(opt, model)
    torch.manual_seed(0)
    curve, t0 = [], time.perf_counter()
    per_step = batch * seq
    for step in range(1, steps + 1):
        start = ((step - 1) * per_step) % (train_ids.numel() - per_step)
        ids = train_ids[start:start + per_step].reshape(batch, seq)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % eval_every == 0 or step == steps:
            with torch.no_grad():
                curve.append((step, float(model(input_ids=val_ids, labels=val_ids).loss)))
    return {"bits": bits, "val_curve": curve, "final_val_loss": curve[-1][1], "seconds": time.perf_counter() - t0}


def main(argv=None) -> int:
    p = parser(__doc__, out="storage_bits.json", batch=8, seq=128)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--steps", type=int, default=150, help="optimizer steps per training run")
    p.add_argument("--eval-every", type=int, default=50, help="steps between validation losses")
    args = p.parse_args(argv)

    sizes = stored_bytes(args.hidden, args.layers, args.seq, args.batch)
    print(f"{'storage_bits':<14}{'Z bytes':>12}{'all saved bytes':>18}")
    for bits, row in sizes.items():
        print(f"{bits:<14}{row['z_bytes']:>12}{row['total_saved_bytes']:>18}")
    print(f"Z ratio 8/16: {sizes[8]['z_bytes'] / sizes[16]['z_bytes']:.3f}; "
          f"all saved ratio: {sizes[8]['total_saved_bytes'] / sizes[16]['total_saved_bytes']:.3f}\n")

    train_ids = wikitext_tokens("valid") % VOCAB
    val_ids = (wikitext_tokens("test", limit=16 * args.seq) % VOCAB).reshape(16, args.seq)
    runs = [train(bits, args.hidden, args.layers, args.steps, args.seq, args.batch, train_ids, val_ids,
                  args.eval_every) for bits in (16, 8)]
    print(f"{'step':>6}{'val 16-bit':>12}{'val 8-bit':>12}")
    for (step, a), (_, b) in zip(runs[0]["val_curve"], runs[1]["val_curve"]):
        print(f"{step:>6}{a:>12.4f}{b:>12.4f}")
    rel = runs[1]["final_val_loss"] / runs[0]["final_val_loss"] - 1
    print(f"final validation loss, 8-bit vs 16-bit: {100 * rel:+.2f}%")
    result = {"args": vars(args),
              "stored_bytes": {str(k): v for k, v in sizes.items()},
              "z_ratio_8_over_16": sizes[8]["z_bytes"] / sizes[16]["z_bytes"],
              "runs": runs, "final_val_loss_relative_change": rel}
    write_result(args.out, "storage_bits", result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
