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

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from benchmarks._bench_env import environment  # noqa: E402
from benchmarks._harness import result_path  # noqa: E402
from benchmarks._real_activations import wikitext_tokens  # noqa: E402

from prac_dist import PRACConfig, apply_prac, hook_optimizer  # noqa: E402
from prac_dist.core import is_compressed_activation  # noqa: E402
from prac_dist.memory import measure_saved_bytes  # noqa: E402

VOCAB = 2048


def _model(hidden, layers, dtype=torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=int(hidden * 8 / 3) // 4 * 4,
                      num_hidden_layers=layers, num_attention_heads=max(1, hidden // 32),
                      num_key_value_heads=max(1, hidden // 32), max_position_embeddings=1024)
    return LlamaForCausalLM(cfg).to(dtype)


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
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--out", default=str(result_path("storage_bits.json")))
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
    result = {"benchmark": "storage_bits", "environment": environment(), "args": vars(args),
              "stored_bytes": {str(k): v for k, v in sizes.items()},
              "z_ratio_8_over_16": sizes[8]["z_bytes"] / sizes[16]["z_bytes"],
              "runs": runs, "final_val_loss_relative_change": rel}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
