"""prac-plan: which PRAC / checkpointing setting fits a memory budget.

    prac-plan --model llama_130m --micro-batch 128 --seq-len 256 --engine zero2 --world-size 4 --budget 24GiB

Prints the predicted per-rank peak memory of the baseline and of the best setting per
activation-checkpointing mix, then the pick. Exit status: 0 when something fits, 1 when
nothing does, 2 on bad input (the message names the field).

    prac-plan --model llama_1b --micro-batch 64 --seq-len 256 --budget 80GiB --measure

measures instead (prac_dist.planner.measure): two training steps of the model under
FakeTensorMode per setting, no GPU and no weights, and prints the largest micro-batch that
fits the budget with each setting (a model that fits no machine here is measured as easily).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import List, Optional

from .plan import DTYPES, ENGINES, plan
from prac_dist.models.shapes import PRESETS

__all__ = ["main", "parse_bytes"]

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """'24GiB' -> 25769803776; '80GB', '1.5TiB', '123456' (bytes) are accepted too."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"--budget={text!r}: accepted is a size like 24GiB, 80GB, 1.5TiB or a byte count")
    value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value < 1:
        raise ValueError(f"--budget={text!r}: accepted is a positive size")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse exits 2 already; keep the field name in the one line
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="prac-plan", description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True,
                    help=f"preset ({', '.join(sorted(PRESETS))}) or a path to a Hugging Face config.json")
    ap.add_argument("--micro-batch", type=int, required=True, help="sequences per rank per micro-step")
    ap.add_argument("--seq-len", type=int, required=True)
    ap.add_argument("--engine", default="single", choices=ENGINES)
    ap.add_argument("--world-size", type=int, default=1, help="data-parallel ranks")
    ap.add_argument("--budget", required=True, help="device memory per rank, e.g. 24GiB or 80GB")
    ap.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    ap.add_argument("--optimizer", default="mixed", choices=("mixed", "adamw"),
                    help="mixed: float32 master weights and moments; adamw: AdamW on the model-dtype weights")
    ap.add_argument("--measure", action="store_true",
                    help="measure the step's peak under FakeTensorMode (single device) and print the largest "
                         "micro-batch per setting, probing --micro-batch and twice it")
    ap.add_argument("--whole-model", action="store_true",
                    help="with --measure: build every layer (default: 2 and 4 layers, extended to the depth)")
    ap.add_argument("--settings", nargs="+", metavar="NAME",
                    help="with --measure: only these settings (prac_dist.planner.measure.RECIPES; default all)")
    ap.add_argument("--all", action="store_true", help="print every candidate setting")
    ap.add_argument("--json", metavar="PATH", help="also write the whole plan as JSON")
    return ap


def _model_arg(value: str):
    if value in PRESETS:
        return value
    if value.endswith(".json"):
        try:
            with open(value) as fh:
                return json.load(fh)
        except OSError as exc:
            raise ValueError(f"--model={value!r}: cannot read it ({exc.strerror})") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"--model={value!r}: not valid JSON ({exc.msg})") from None
    raise ValueError(f"--model={value!r}: accepted is a preset {sorted(PRESETS)} or a config.json path")


def main(argv: Optional[List[str]] = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    try:
        budget = parse_bytes(args.budget)
        model = _model_arg(args.model)
        if args.measure:
            if args.engine != "single" or args.dtype != "bfloat16":
                raise ValueError(f"--engine={args.engine!r} --dtype={args.dtype!r} with --measure: accepted is "
                                 f"single and bfloat16 (one device's step is measured)")
            return _measure(model, args, budget)
        result = plan(model, micro_batch=args.micro_batch, seq_len=args.seq_len, engine=args.engine,
                      world_size=args.world_size, memory_budget_bytes=budget, dtype=args.dtype,
                      optimizer=args.optimizer)
    except ValueError as exc:
        msg = str(exc)
        for field in ("micro_batch", "seq_len", "world_size"):  # name the flag the user typed
            msg = msg.replace(f"{field}=", f"--{field.replace('_', '-')}=", 1) if msg.startswith(field) else msg
        msg = msg.replace("model_config.", "--model ", 1)
        ap.print_usage(sys.stderr)
        print(f"prac-plan: error: {msg}", file=sys.stderr)
        return 2
    print(result.table(all_rows=args.all))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result.to_dict(), fh, indent=2)
    return 0 if result.pick is not None else 1


def _measure(model, args, budget: int) -> int:
    from .measure import measured_plan

    from .measure import RECIPES

    unknown = [n for n in args.settings or () if n not in RECIPES]
    if unknown:
        raise ValueError(f"--settings={unknown[0]!r}: accepted are {list(RECIPES)}")
    recipes = {n: RECIPES[n] for n in args.settings} if args.settings else RECIPES
    rows = measured_plan(model, budget, args.seq_len, args.micro_batch, optimizer=args.optimizer, recipes=recipes,
                         depths=None if args.whole_model else (2, 4),
                         log=lambda line: print("  " + line, file=sys.stderr, flush=True))
    gib = 2**30
    print(f"{args.model}: seq {args.seq_len}, {args.optimizer} optimizer, budget {budget / gib:.2f} GiB, measured "
          f"under FakeTensorMode ({'every layer' if args.whole_model else 'line through 2 and 4 layers'})")
    print(f"{'setting':<36} {'largest micro-batch':>19} {'GiB per sample':>14}")
    for r in rows:
        print(f"{r['setting']:<36} {r['largest']:>19} {r['bytes_per_sample'] / gib:>14.3f}")
    best = rows[0]
    if best["largest"] < 1:
        print("nothing fits: not even one sequence")
        return 1
    print(f"largest micro-batch that fits: {best['largest']} with {best['setting']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"model": args.model, "budget_bytes": budget, "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
