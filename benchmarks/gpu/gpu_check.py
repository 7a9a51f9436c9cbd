"""One GPU check: what only a GPU can show, in at most 8 minutes on one H100 / H200.

    python -m benchmarks.gpu.gpu_check              # needs CUDA; writes benchmarks/results/gpu_check.json
    python -m benchmarks.gpu.gpu_check --dry-run    # CPU, tiny shapes, Triton's interpreter: checks the script
                                                # end to end; measures nothing; writes only with --out

1. Kernels: every Triton kernel (benchmarks/kernels/kernel_timing.py's cases) against its PyTorch reference at the
   LLaMA-1B layer shape, bf16, 8,192 tokens: the largest difference relative to the reference's
   largest entry (one bf16 ulp of it allowed; 8-bit storage compared as codes x scale, 2 codes), pass/fail,
   time (median of triton.testing.do_bench), bytes moved and achieved bandwidth next to the
   measured peak (a 1 GiB copy).
2. LLaMA-130M at micro-batch 128 x 256, bf16, AdamW (benchmarks/gpu/paper_table.py's Bench): peak
   allocated memory and tokens/s for the baseline, the paper preset (`PRACConfig.paper()`, else
   paper_table's "prac_paper") and `PRACConfig()` defaults; then each one's largest micro-batch
   (doubling from 128, bisection to 32, at most 1,024, no new trial after the time budget).
Exit status: 0 when every kernel matches its reference, 1 when one does not, 2 without CUDA (unless
--dry-run). A dry run's numbers are the interpreter's and the CPU's: never results.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

# Kernel shape: LLaMA-1B's layer (benchmarks/kernels/kernel_timing.py); dry run: a tiny one the interpreter runs in seconds.
KERNEL_SHAPE = {"gpu": dict(N=8192, hidden=2048, ffn=5461), "dry": dict(N=64, hidden=64, ffn=176)}
# Largest difference relative to the reference's largest entry, per output dtype: one ulp of that entry
# (2^-7 bf16, 2^-10 fp16: the kernels accumulate in float32 in another order and round once; the
# interpreter's truncating casts measured up to 6.5e-3 in bf16); float32 outputs: 1e-5.
_TOLERANCE = {torch.bfloat16: 2 ** -7, torch.float16: 2 ** -10, torch.float32: 1e-5}
SETTINGS = ("baseline", "paper", "defaults")


def _outputs(value) -> List[torch.Tensor]:
    return [t for t in (value if isinstance(value, tuple) else (value,)) if t is not None]


def compare(name: str, got, want) -> Dict:
    """Largest difference of the outputs relative to the reference's largest entry.

    8-bit storage (int8 codes, float32 row scales) is compared as codes x scale: the two sides round
    independently (different random streams), and Z itself may differ by one rounding, so each entry
    may differ by up to 2 codes' worth of its row scale (2/127 of the row's largest |z|).
    """
    got, want = _outputs(got), _outputs(want)
    if got[0].dtype == torch.int8:
        got, want = [got[0].float() * got[1][:, None]], [want[0].float() * want[1][:, None]]
        tolerance = 2 / 127
    else:
        tolerance = _TOLERANCE[want[0].dtype]
    worst = 0.0
    for a, b in zip(got, want):
        if a.numel():
            scale = float(b.float().abs().max().clamp_min(1e-30))
            worst = max(worst, float((a.float() - b.float()).abs().max()) / scale)
    return {"kernel": name, "max_difference": worst, "tolerance": tolerance, "matches_reference": worst <= tolerance}


def _time(fn, device: torch.device) -> float:
    if device.type == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e-3
    t0 = time.perf_counter()  # dry run: one call, only to run the path
    fn()
    return time.perf_counter() - t0


def kernel_rows(device: torch.device, shape: Dict[str, int]) -> List[Dict]:
    from benchmarks.kernels.kernel_timing import kernel_cases, peak_bandwidth

    peak = peak_bandwidth() if device.type == "cuda" else None
    rows = []
    for name, nbytes, impls in kernel_cases(shape["N"], shape["hidden"], shape["ffn"], device):
        row = compare(name, impls["triton"](), impls["torch"]())
        for impl, fn in impls.items():
            sec = _time(fn, device)
            row[f"{impl}_us"] = sec * 1e6
            row[f"{impl}_GBps"] = nbytes / sec / 1e9
        row.update(bytes=nbytes, **shape)
        row["triton_share_of_peak"] = None if peak is None else nbytes / (row["triton_us"] * 1e-6) / peak
        rows.append(row)
    return rows, (None if peak is None else peak / 1e9)


def paper_config():
    """`PRACConfig.paper()` where it exists, else paper_table's definition of the paper's method."""
    from prac_dist import PRACConfig

    if hasattr(PRACConfig, "paper"):
        return PRACConfig.paper(), "PRACConfig.paper()"
    from benchmarks.gpu.paper_table import SETTINGS as PAPER_SETTINGS

    return PAPER_SETTINGS["prac_paper"](), "paper_table.SETTINGS['prac_paper'] (PRACConfig.paper() absent)"


def training_rows(args, device: torch.device, deadline: float) -> Dict:
    from benchmarks.gpu import paper_table
    from prac_dist import PRACConfig

    paper, paper_source = paper_config()
    configs = {"baseline": None, "paper": paper, "defaults": PRACConfig()}
    for name, cfg in configs.items():  # Bench builds settings by name from paper_table.SETTINGS
        paper_table.SETTINGS[f"gpu_check_{name}"] = (lambda c=cfg: c) if cfg is not None else None
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    bench = paper_table.Bench(device, dtype, args.seq, args.steps, args.warmup, tiny=args.dry_run)
    rows: Dict[str, Dict] = {}
    for name in SETTINGS:
        setting = f"gpu_check_{name}"
        row: Dict = {"config": None if configs[name] is None else configs[name].to_dict()}
        try:
            row["equal_batch"] = bench.measure("llama_130m", setting, args.batch)
        except torch.cuda.OutOfMemoryError:
            row["equal_batch"] = {"batch": args.batch, "oom": True}
        rows[name] = row
    # Largest micro-batch last, sharing what is left of the budget (each trial builds a model).
    for i, name in enumerate(SETTINGS):
        share = (deadline - time.perf_counter()) / (len(SETTINGS) - i)
        rows[name]["max_batch"] = bench.max_batch("llama_130m", f"gpu_check_{name}", start=args.batch,
                                                  limit=args.search_limit, resolution=args.resolution,
                                                  deadline=time.perf_counter() + max(0.0, share))
    return {"paper_config_source": paper_source, "settings": rows}


def print_tables(kernels: List[Dict], peak: Optional[float], training: Dict) -> None:
    print(f"peak bandwidth (1 GiB copy): {'-' if peak is None else f'{peak:.0f} GB/s'}")
    print(f"{'kernel':<22}{'match':>6}{'max diff':>11}{'triton us':>11}{'GB/s':>8}{'torch us':>10}{'GB/s':>8}")
    for r in kernels:
        print(f"{r['kernel']:<22}{'yes' if r['matches_reference'] else 'NO':>6}{r['max_difference']:>11.2e}"
              f"{r['triton_us']:>11.1f}{r['triton_GBps']:>8.1f}{r['torch_us']:>10.1f}{r['torch_GBps']:>8.1f}")
    print(f"\n{'LLaMA-130M':<12}{'batch':>6}{'peak GiB':>10}{'tokens/s':>11}{'max batch':>11}")
    for name, row in training["settings"].items():
        e, m = row["equal_batch"], row["max_batch"]
        peak_gib = f"{e['peak_allocated_bytes'] / 2**30:.2f}" if "peak_allocated_bytes" in e else "-"
        tps = "OOM" if e.get("oom") else f"{e['tokens_per_s']:,.0f}"
        mark = "+" if m.get("capped_at_limit") else ("?" if m.get("stopped_at_deadline") else "")
        print(f"{name:<12}{e['batch']:>6}{peak_gib:>10}{tps:>11}{str(m['max_batch']) + mark:>11}")
    print("('+' = the search limit fits; '?' = the time budget ended the search)")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--dry-run", action="store_true",
                   help="CPU, tiny shapes, TRITON_INTERPRET=1: runs every step, measures nothing")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (allocator, first refresh)")
    p.add_argument("--search-limit", type=int, default=1024)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="no new largest-batch trial starts after this many seconds (8 min wall in all)")
    p.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/gpu_check.json on CUDA; a dry run writes only with it)")
    args = p.parse_args(argv)
    if args.dry_run:
        args.batch, args.seq, args.steps, args.warmup, args.search_limit, args.resolution = 2, 16, 1, 1, 4, 1
        os.environ["TRITON_INTERPRET"] = "1"  # read when triton is first imported, which is below
    for name in ("batch", "seq", "steps", "warmup", "search_limit", "resolution"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}={getattr(args, name)}: accepted is an integer >= 1")
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check.py: error: this check needs a CUDA GPU and torch.cuda.is_available() is False; "
              "pass --dry-run to run it end to end on CPU (no numbers)", file=sys.stderr)
        return 2
    if args.dry_run and "triton" in sys.modules and not sys.modules["triton"].knobs.runtime.interpret:
        print("gpu_check.py: error: --dry-run needs TRITON_INTERPRET=1 before triton is imported", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    from transformers.utils import logging as hf_logging

    # The harness imports prac_dist, and with it triton: only now that TRITON_INTERPRET is set.
    from benchmarks._harness import result_path, write_result

    hf_logging.set_verbosity_error()
    t0 = time.perf_counter()
    kernels, peak = kernel_rows(device, KERNEL_SHAPE["dry" if args.dry_run else "gpu"])
    training = training_rows(args, device, deadline=t0 + args.budget_s)
    print_tables(kernels, peak, training)
    fields = {"dry_run": args.dry_run, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "peak_bandwidth_GBps": peak, "kernels": kernels, "llama_130m": training,
              "wall_s": time.perf_counter() - t0}
    path = args.out if args.out is not None else (None if args.dry_run else result_path("gpu_check.json"))
    if path is not None:
        extra = {"note": "dry run on CPU (Triton interpreter): no GPU numbers"} if args.dry_run else {}
        write_result(path, "gpu_check", fields, **extra)
        print(f"wrote {path} ({fields['wall_s']:.0f} s)")
    failed = [r["kernel"] for r in kernels if not r["matches_reference"]]
    if failed:
        print(f"kernels differing from their reference: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
