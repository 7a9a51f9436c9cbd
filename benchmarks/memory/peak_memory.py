"""Peak memory of a whole training step, and the micro-batch it buys: measured without a GPU.

Per setting (prac_dist.planner.measure.RECIPES: Hugging Face, its full and selective activation
checkpointing, the fused loss head alone, PRACConfig(), lean(), paper(), PRAC with checkpointing)
and optimizer ('adamw': AdamW on bf16 weights, the paper's setup; 'mixed': float32 master weights
and moments, DeepSpeed's and FSDP2's usual setting), the peak of the second training step of an HF
LLaMA (SDPA, bf16, 256 tokens) with its parts, by MemTracker under FakeTensorMode. The paper's GPU
figures (Tables 2/4) are printed beside.

--fit: the largest micro-batch that fits each budget (80 and 40 GiB): the peak is affine in the
micro-batch at a fixed sequence length, so two measured batches give the line, and --verify
measures the predicted batch and the one above it (prac_dist.planner.measure.largest_micro_batch).

    python -m benchmarks.memory.peak_memory --model llama_130m --batches 128
    python -m benchmarks.memory.peak_memory --model llama_1b --batches 64 128 --fit --verify "HF" "PRACConfig()"

Each row is written to benchmarks/results/peak_memory.json as it finishes (a rerun skips the rows
the file holds, so a killed run resumes); --plot draws peak_memory.png (peak per setting, stacked by part).
torch.compile is not measured: TorchDynamo does not trace under FakeTensorMode (see RECIPES).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import List

from prac_dist.planner.measure import (OPTIMIZERS, RECIPES, largest_micro_batch, measure_peak, measure_peak_by_depth,
                                      num_layers)

from benchmarks._bench_env import command_line, provenance
from benchmarks._harness import RESULTS, parser, write_result

OUT = RESULTS / "peak_memory.json"
GIB = 2**30
SEQ = 256
BUDGETS_GIB = (80, 40)

# The PRAC paper's GPU measurements (GB, Tables 2/4): LLaMA, AdamW, bf16, 256 tokens; None = out of memory.
PAPER_GB = {
    ("llama_130m", 128): {"HF": 21.26, "PRAC (paper)": 15.65},
    ("llama_1b", 64): {"HF": 50.35, "PRAC (paper)": 36.90},
    ("llama_1b", 128): {"HF": None},
}
NOT_MEASURED = {
    "torch.compile, activation_memory_budget=0.5": (
        "TorchDynamo does not trace while a TorchDispatchMode (FakeTensorMode, MemTracker) is active: the "
        "compiled model runs eagerly and its peak equals HF's to the byte (checked at 2 layers of LLaMA-130M, "
        "no frame captured). It needs a GPU run."),
}


def _load() -> dict:
    if OUT.exists():
        data = json.loads(OUT.read_text())
        for row in data["rows"]:
            row.setdefault("method", "measured")
        return data
    return {"rows": [], "fits": []}


def _key(row: dict) -> tuple:
    return row["model"], row["micro_batch"], row["seq_len"], row["optimizer"], row["setting"], row["method"]


def _method(model: str, depths) -> str:
    if depths is None or num_layers(model) in depths:
        return "measured"
    return f"line through {depths[0]} and {depths[1]} layers"


def _merge(data: dict) -> None:
    """Add the rows and fits another process wrote to the file since `data` was read (runs may overlap)."""
    disk = _load()
    keys = {_key(r) for r in data["rows"]}
    data["rows"] += [r for r in disk["rows"] if _key(r) not in keys]
    fit_keys = {_fit_key(f) for f in data["fits"]}
    data["fits"] += [f for f in disk.get("fits", []) if _fit_key(f) not in fit_keys]


def _fit_key(f: dict) -> tuple:
    return f["model"], f["optimizer"], f["setting"], f["budget_gib"], f["method"]


def _save(data: dict, args_line: str) -> None:
    import fcntl
    import tempfile

    with open(Path(tempfile.gettempdir()) / "prac_dist_peak_memory.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _merge(data)
        _write(data, args_line)


def _write(data: dict, args_line: str) -> None:
    fields = {k: v for k, v in data.items() if k not in ("benchmark", "environment")}
    fields["sharded_fits"] = sharded_fits(data)
    fields.update(paper_gb={f"{m} x {b}": v for (m, b), v in PAPER_GB.items()}, not_measured=NOT_MEASURED,
                  seq_len=SEQ)
    write_result(OUT, "peak_memory", fields, command=args_line)  # each row names its own command too


def _drop(data: dict, model: str, settings: List[str], optimizers: List[str], args_line: str) -> None:
    """Remove the rows and fits of these settings from `data` and from the file (not merged back)."""
    import fcntl
    import tempfile

    def keep(r: dict) -> bool:
        return not (r["model"] == model and r["setting"] in settings and r["optimizer"] in optimizers)

    with open(Path(tempfile.gettempdir()) / "prac_dist_peak_memory.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data.update(_load())
        data["rows"] = [r for r in data["rows"] if keep(r)]
        data["fits"] = [f for f in data.get("fits", []) if keep(f)]
        _write(data, args_line)


def _measure_row(data: dict, model: str, batch: int, optimizer: str, setting: str, depths, args_line: str) -> dict:
    method = _method(model, depths)
    key = (model, batch, SEQ, optimizer, setting, method)
    for row in data["rows"]:
        if _key(row) == key:
            return row
    t0 = time.time()
    if method == "measured":
        m = measure_peak(model, RECIPES[setting], batch, SEQ, optimizer)
    else:
        m = measure_peak_by_depth(model, RECIPES[setting], batch, SEQ, optimizer, depths=depths)
    # Each row names its own commit and command: rows of a setting whose code did not change are kept
    # when the others are measured again.
    row = {"model": model, "micro_batch": batch, "seq_len": SEQ, "optimizer": optimizer, "setting": setting,
           "method": method, **m.to_dict(), "seconds": round(time.time() - t0, 1), "command": args_line,
           "commit": provenance()["commit"]}
    data["rows"].append(row)
    _save(data, args_line)
    print(f"  {model} x {batch} {optimizer:<5} {setting:<36} {method[:8]} peak {m.peak_bytes / GIB:7.2f} GiB "
          f"(first step {m.first_step_peak_bytes / GIB:.2f}) {row['seconds']:.0f} s", file=sys.stderr, flush=True)
    return row


def _fit(data: dict, model: str, optimizer: str, setting: str, batches: List[int], verify: bool, depths,
         args_line: str) -> None:
    for budget in BUDGETS_GIB:
        def measure(b: int) -> int:
            row = _measure_row(data, model, b, optimizer, setting, depths, args_line)
            return max(row["peak_bytes"], row["first_step_peak_bytes"])  # both steps must fit

        result = largest_micro_batch(measure, budget * GIB, probes=batches[:2], verify=verify)
        entry = {"model": model, "optimizer": optimizer, "setting": setting, "budget_gib": budget,
                 "seq_len": SEQ, "method": _method(model, depths), "verified": verify, **result,
                 "command": args_line}
        data["fits"] = [f for f in data["fits"] if _fit_key(f) != _fit_key(entry)] + [entry]
        _save(data, args_line)


SHARDED_WORLD = 8


def per_rank_sharded(row: dict, world: int = SHARDED_WORLD) -> int:
    """A measured single-device step's peak as one rank of ZeRO-3 / FSDP2 over `world` ranks holds it:
    parameters, gradients and optimizer state divided by the world, activations and temporaries as
    measured, plus the gathered blocks (prac_dist.planner.plan's buffer formula: the running block and
    the prefetched one, and the root's embedding and head). A formula on measured parts: no multi-rank
    tracker run checks it."""
    from prac_dist.models.shapes import PRESETS
    from prac_dist.planner.plan import _buffers

    p = row["parts"]
    sharded = -(-(p["params"] + p["grads"] + p["optimizer"]) // world)
    return sharded + p["activations"] + p["temporaries"] + p["buffers"] + p["other"] + \
        _buffers(PRESETS[row["model"]], "fsdp2", world, 2)


def sharded_fits(data: dict, model: str = "llama_7b") -> List[dict]:
    """Largest micro-batch per rank at 80 / 40 GiB under ZeRO-3 / FSDP2 x 8, from the line of two batches.

    Only rows whose single-device peak falls in forward or backward (not every gradient live: the
    optimizer step's peak does not grow with the batch, and a line through it would not either); the
    two largest such batches."""
    out = []
    for (opt, setting) in sorted({(r["optimizer"], r["setting"]) for r in data["rows"] if r["model"] == model}):
        rows = sorted((r for r in data["rows"] if (r["model"], r["optimizer"], r["setting"]) == (model, opt, setting)
                       and 2 * r["parts"]["grads"] < r["parts"]["params"]), key=lambda r: r["micro_batch"])[-2:]
        if len(rows) < 2:
            continue
        (b0, y0), (b1, y1) = ((r["micro_batch"], per_rank_sharded(r)) for r in rows)
        slope = (y1 - y0) / (b1 - b0)
        for budget in BUDGETS_GIB:
            largest = max(0, int((budget * GIB - (y0 - slope * b0)) // slope))
            out.append({"model": model, "optimizer": opt, "setting": setting, "world": SHARDED_WORLD,
                        "budget_gib": budget, "largest": largest, "per_rank_bytes": {str(b0): y0, str(b1): y1},
                        "method": "ZeRO-3/FSDP2 formula on the measured single-device parts (line of two batches)"})
    return out


def table(data: dict) -> str:
    lines = [f"{'model':<11} {'batch':>5} {'optim':<5} {'how':<3} {'setting':<34} {'peak GiB':>8} {'params':>6} {'grads':>6} "
             f"{'optim':>6} {'activ':>6} {'temp':>6} {'vs HF':>6} {'paper GB':>8}"]
    base = {_group(r): r["peak_bytes"] for r in data["rows"] if r["setting"] == "HF"}
    for r in sorted(data["rows"], key=_group):
        p = r["parts"]
        hf = base.get(_group(r))
        paper = PAPER_GB.get((r["model"], r["micro_batch"]), {})
        label = {"HF": "HF", "paper()": "PRAC (paper)"}.get(r["setting"])
        ref = paper.get(label, "") if r["optimizer"] == "adamw" else ""
        ref = "OOM" if label in paper and ref is None else (f"{ref:.2f}" if ref != "" else "")
        how = "M" if r["method"] == "measured" else "L"
        lines.append(f"{r['model']:<11} {r['micro_batch']:>5} {r['optimizer']:<5} {how:<3} {r['setting']:<34} "
                     f"{r['peak_bytes'] / GIB:>8.2f} " + " ".join(f"{p[k] / GIB:>6.2f}" for k in
                                                                   ("params", "grads", "optimizer", "activations",
                                                                    "temporaries"))
                     + f" {r['peak_bytes'] / hf if hf else float('nan'):>6.3f} {ref:>8}")
    lines.append("how: M = measured at the model's depth; L = the line through two shallow depths "
                 "(measure_peak_by_depth)")
    if data.get("fits"):
        lines.append("")
        lines.append(f"{'model':<11} {'optim':<5} {'setting':<34} {'budget':>6} {'largest micro-batch':>20} "
                     f"{'(line)':>7}")
        for f in data["fits"]:
            lines.append(f"{f['model']:<11} {f['optimizer']:<5} {f['setting']:<34} {f['budget_gib']:>4} GiB "
                         f"{f['largest']:>20} {f['predicted']:>7}" + ("" if f["verified"] else "  (line only)"))
    for f in data.get("sharded_fits", []):
        lines.append(f"{f['model']:<11} {f['optimizer']:<5} {f['setting']:<34} {f['budget_gib']:>4} GiB "
                     f"{f['largest']:>20}  per rank, ZeRO-3/FSDP2 x {f['world']}")
    return "\n".join(lines)


def _group(r: dict) -> tuple:
    return r["model"], r["micro_batch"], r["optimizer"], r["method"]


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({_group(r) for r in data["rows"] if r["method"] == "measured" or r["model"] != "llama_130m"})
    parts = ("params", "grads", "optimizer", "activations", "temporaries")
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 4.8), squeeze=False)
    for ax, (model, batch, opt, method) in zip(axes[0], groups):
        rows = [r for r in data["rows"] if _group(r) == (model, batch, opt, method)]
        bottom = [0.0] * len(rows)
        for part in parts:
            vals = [r["parts"][part] / GIB for r in rows]
            ax.bar(range(len(rows)), vals, bottom=bottom, label=part)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([r["setting"] for r in rows], rotation=70, ha="right", fontsize=7)
        ax.set_title(f"{model} x {batch} x {SEQ}, {opt}", fontsize=9)
        ax.axhline(80, color="k", lw=0.6, ls="--")
        ax.set_ylabel("peak GiB (second step)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--model", default="llama_130m")
    ap.add_argument("--batches", type=int, nargs="+", default=[128])
    ap.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    ap.add_argument("--settings", nargs="+", default=list(RECIPES), help=f"of {list(RECIPES)}")
    ap.add_argument("--fit", action="store_true", help="largest micro-batch per budget, from the first two batches")
    ap.add_argument("--verify", nargs="*", default=None,
                    help="settings whose fitted largest micro-batch (and the one above) are measured")
    ap.add_argument("--depths", type=int, nargs=2, default=None, metavar=("A", "B"),
                    help="measure A and B decoder layers and extend the line to the model's depth "
                         "(prac_dist.planner.measure.measure_peak_by_depth); default: the whole model")
    ap.add_argument("--plot", action="store_true")
    ap.add_argument("--remeasure", action="store_true",
                    help="drop this model's rows and fits of --settings x --optimizers from the file, then measure "
                         "them again (after a change to the code those settings run)")
    ap.add_argument("--report", action="store_true",
                    help="measure nothing: rewrite the file's derived fields, print the table (and --plot)")
    args = ap.parse_args(argv)
    unknown = [s for s in args.settings + (args.verify or []) if s not in RECIPES]
    if unknown:
        raise SystemExit(f"--settings {unknown[0]!r}: accepted are {list(RECIPES)}")
    if args.fit and len(args.batches) < 2:
        raise SystemExit(f"--fit needs two --batches (got {args.batches})")
    args_line = command_line()
    data = _load()
    if args.report:
        _save(data, data["environment"]["command"])
        print(table(data))
        if args.plot:
            plot(data, RESULTS / "peak_memory.png")
        return 0
    if args.remeasure:
        _drop(data, args.model, args.settings, args.optimizers, args_line)
    for batch in args.batches:
        for opt in args.optimizers:
            for setting in args.settings:
                _measure_row(data, args.model, batch, opt, setting, args.depths, args_line)
    if args.fit:
        for opt in args.optimizers:
            for setting in args.settings:
                _fit(data, args.model, opt, setting, args.batches, setting in (args.verify or ()), args.depths,
                     args_line)
    print(table(data))
    if args.plot:
        plot(data, RESULTS / "peak_memory.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
