"""Adaptive ranks vs fixed 0.3/0.3 at the same stored bytes: final validation loss of prac-train.

'min_variance' keeps every layer's r1 + r2 (hence its stored bytes) and moves the split at each
principal refresh to minimise PRAC's variance bound; 'global' also moves r1 + r2 between the linear
layers, keeping their total (hence the stored bytes). ('energy' is left out: on a trained model's
activations its gradient variance is 2.5x that of fixed ratios, benchmarks/results/grad_quality.json.) This script trains the CPU demo preset with both,
over several seeds, and measures the bytes saved for backward of each (prac_dist.memory).

    python -m benchmarks.quality.adaptive_rank --seeds 0 1 2 --max-steps 120   # writes benchmarks/results/adaptive_rank.json
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks._harness import ROOT, llama, parser, write_result

POLICIES = ("off", "min_variance", "global")


def train(policy: str, seed: int, steps: int, out: Path, config: str) -> float:
    shutil.rmtree(out, ignore_errors=True)  # this benchmark's own scratch run: always train from scratch
    cmd = [sys.executable, "-m", "prac_dist.train", "--config", config, "--max-steps", str(steps),
           "--seed", str(seed), "--output-dir", str(out), "--set", f'prac.adaptive_rank="{policy}"',
           "--set", f"train.eval_every={steps}"]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["val_loss"] for r in evals if r.get("kind") == "eval"][-1]


def stored_bytes(policy: str) -> int:
    """Bytes saved for backward by one demo-sized batch after the first refresh."""
    from transformers.utils import logging

    from prac_dist import PRACConfig, apply_prac, step
    from prac_dist.memory import measure_saved_bytes
    from prac_dist.train.data import load_tokenizer, resolve_path

    logging.set_verbosity_error()
    torch.manual_seed(0)
    model = llama("llama_tiny_untied")
    apply_prac(model, PRACConfig(adaptive_rank=policy, storage_bits=16, linear_storage="project",
                                 nonlinear_storage="project"))
    tok = load_tokenizer("bundled:gpt2")
    text = resolve_path("bundled:wikitext-2/valid.txt").read_text()[:200_000]
    x = torch.tensor(tok(text)["input_ids"][: 8 * 128]).view(8, 128)
    model(input_ids=x, labels=x).loss.backward()  # first step: ranks chosen from real activations
    step(model)  # 'global' moves the budgets here ...
    model(input_ids=x, labels=x).loss.backward()  # ... and the bases whose size changed refresh here
    return measure_saved_bytes(lambda: model(input_ids=x, labels=x).loss, model).total_bytes


def main(argv=None) -> None:
    ap = parser(__doc__, out="adaptive_rank.json")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--max-steps", type=int, default=120)
    ap.add_argument("--config", default="configs/train/llama_tiny.yaml")
    ap.add_argument("--workdir", default="runs/adaptive_rank")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = {p: {"val_loss": {}, "stored_bytes": stored_bytes(p)} for p in POLICIES}
    for seed in args.seeds:
        for policy in POLICIES:
            loss = train(policy, seed, args.max_steps, ROOT / args.workdir / f"{policy}_s{seed}", args.config)
            rows[policy]["val_loss"][seed] = loss
            print(f"seed {seed} {policy:<13} final val loss {loss:.4f}", flush=True)
    print(f"\n{'adaptive_rank':<13} {'stored MiB':>10} {'mean val loss':>14} {'per seed':>20}")
    for policy, r in rows.items():
        losses = list(r["val_loss"].values())
        r["mean_val_loss"] = statistics.fmean(losses)
        print(f"{policy:<13} {r['stored_bytes'] / 2**20:>10.2f} {r['mean_val_loss']:>14.4f} "
              f"{' '.join(f'{v:.4f}' for v in losses):>20}")
    results = {"config": args.config, "max_steps": args.max_steps, "seeds": args.seeds, "policies": rows,
               "seconds": time.perf_counter() - t0}
    write_result(args.out, "adaptive_rank", results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
