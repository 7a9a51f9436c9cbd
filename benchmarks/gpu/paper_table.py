"""The PRAC paper's Table 2 setting on one GPU: peak memory and tokens/s, and the largest micro-batch.

LLaMA-130M / 350M / 1B (GaLore's shapes, prac_dist.train.models.PRESETS), sequence 256,
micro-batch 128, random tokens, bf16 weights and AdamW states (the paper's and GaLore's
"pure bf16" training), one process. Settings, each in a freshly built model:

    baseline     no PRAC
    prac_paper   the paper's method: PRACConfig.paper(fused_loss=False) (0.3/0.3 linear, 0.2/0.2 nonlinear)
    prac_full    everything prac_dist adds: fused linear + cross-entropy head, 8-bit storage of Z,
                 randomized principal solver, Triton kernels where available (kernel="auto")

Per (model, setting) at --batch: peak allocated memory (torch.cuda.max_memory_allocated over
warm-up + timed steps) and tokens/s over --steps timed optimizer steps (after --warmup, which
include PRAC's first principal refresh). Then the largest micro-batch that trains without
torch.cuda.OutOfMemoryError (doubling, then bisection to --resolution) and its tokens/s.
(Activation offload is a DeepSpeed feature: see benchmarks/gpu/deepspeed_gpu.py.)

    python -m benchmarks.gpu.paper_table                      # needs CUDA; writes benchmarks/results/paper_table.json
    python -m benchmarks.gpu.paper_table --models llama_130m --no-max-batch
    python -m benchmarks.gpu.paper_table --dry-run            # CPU, a tiny model: checks the script, measures nothing
Exits with status 2 (and says why) when CUDA is not available, unless --dry-run.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from benchmarks._harness import llama, parser, result_path, shape, write_result  # noqa: E402

import prac_dist  # noqa: E402
from prac_dist import PRACConfig  # noqa: E402

RESULTS = result_path("paper_table.json")
MODELS = ("llama_130m", "llama_350m", "llama_1b")
SETTINGS: Dict[str, Optional[Callable[[], PRACConfig]]] = {
    "baseline": None,
    "prac_paper": lambda: PRACConfig.paper(fused_loss=False),
    "prac_full": lambda: PRACConfig(fused_loss=True, storage_bits=8, principal_solver="randomized", kernel="auto"),
}
# Goals for LLaMA-130M at micro-batch 128 x 256 (paper: PRAC 15.65 GB, baseline 21.26 GB).
GOAL_PEAK_BYTES = 12e9
GOAL_SPEED_RATIO = 0.95
TINY = "llama_64x2"  # --tiny / --dry-run: builds and steps in well under a second on one CPU core


class Bench:
    def __init__(self, device: torch.device, dtype: torch.dtype, seq: int, steps: int, warmup: int, tiny: bool):
        self.device, self.dtype, self.seq, self.steps, self.warmup, self.tiny = device, dtype, seq, steps, warmup, tiny

    def build(self, model_name: str, setting: str):
        torch.manual_seed(0)
        s = shape(TINY if self.tiny else model_name, max_positions=max(1024, self.seq), tied=False)
        with torch.device(self.device):
            model = llama(s, config=dict(rms_norm_eps=1e-6)).to(self.dtype)
        make = SETTINGS[setting]
        if make is not None:
            prac_dist.apply_prac(model, make())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
        return model, opt, s.vocab

    def train_step(self, model, opt, ids: torch.Tensor) -> None:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if prac_dist.is_prac_model(model):
            prac_dist.step(model)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def measure(self, model_name: str, setting: str, batch: int, steps: Optional[int] = None) -> Dict:
        """Peak memory and tokens/s of `steps` timed steps at `batch`; raises OutOfMemoryError."""
        steps = self.steps if steps is None else steps
        model = opt = None
        try:
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            model, opt, vocab = self.build(model_name, setting)
            gen = torch.Generator(device="cpu").manual_seed(1)
            ids = torch.randint(0, vocab, (batch, self.seq), generator=gen).to(self.device)
            for _ in range(self.warmup):
                self.train_step(model, opt, ids)
            self._sync()
            t0 = time.perf_counter()
            for _ in range(steps):
                self.train_step(model, opt, ids)
            self._sync()
            dt = time.perf_counter() - t0
            out = {"batch": batch, "tokens_per_s": batch * self.seq * steps / dt, "step_s": dt / steps}
            if self.device.type == "cuda":
                out["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(self.device)
            out["saved_for_backward_bytes"] = self._saved_bytes(model, ids[: min(batch, 8)]) * batch / min(batch, 8)
            return out
        finally:
            del model, opt
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    @staticmethod
    def _saved_bytes(model, ids: torch.Tensor) -> float:
        """Bytes saved for backward by one forward + loss, from a few sequences (it is linear in the batch)."""
        from prac_dist.memory import measure_saved_bytes

        state = prac_dist.prac_state_dict(model) if prac_dist.is_prac_model(model) else None
        report = measure_saved_bytes(lambda: model(input_ids=ids, labels=ids).loss, model)
        if state is not None:
            prac_dist.load_prac_state_dict(model, state)
        return float(report.total_bytes)

    def fits(self, model_name: str, setting: str, batch: int) -> bool:
        try:
            self.measure(model_name, setting, batch, steps=1)
            return True
        except torch.cuda.OutOfMemoryError:
            return False

    def max_batch(self, model_name: str, setting: str, start: int, limit: int, resolution: int,
                  deadline: Optional[float] = None) -> Dict:
        """Largest batch <= limit that fits: double from `start`, then bisect down to `resolution`.

        deadline: a time.perf_counter() value after which no new trial starts; the answer is then the
        largest batch that fitted so far, with "stopped_at_deadline": True.
        """
        if deadline is not None:
            fits, best = self.fits, [0]

            def bounded(model_name: str, setting: str, batch: int) -> bool:
                if time.perf_counter() > deadline:
                    raise TimeoutError
                ok = fits(model_name, setting, batch)
                best[0] = max(best[0], batch) if ok else best[0]
                return ok

            self.fits = bounded  # an instance attribute shadows the method for the nested search only
            try:
                return self.max_batch(model_name, setting, start, limit, resolution)
            except TimeoutError:
                return {"max_batch": best[0], "capped_at_limit": False, "stopped_at_deadline": True}
            finally:
                del self.fits
        lo, hi = 0, None
        b = start
        while b <= limit:
            if self.fits(model_name, setting, b):
                lo, b = b, b * 2
            else:
                hi = b
                break
        if lo == 0:  # even `start` does not fit: bisect below it
            hi, lo = start, 0
        if hi is None:
            return {"max_batch": lo, "capped_at_limit": True}
        while hi - lo > resolution:
            mid = (lo + hi) // 2 // resolution * resolution or (lo + hi) // 2
            if mid <= lo:
                break
            if self.fits(model_name, setting, mid):
                lo = mid
            else:
                hi = mid
        return {"max_batch": lo, "capped_at_limit": False, "first_failing_batch": hi}


def gpu_extras(device: torch.device) -> Dict:
    """Fields beyond _bench_env.environment() that a GPU table needs (the GPU itself is named there)."""
    if device.type != "cuda":
        return {"note": "dry run on CPU: no GPU numbers"}
    props = torch.cuda.get_device_properties(device)
    return {"cudnn": torch.backends.cudnn.version(), "capability": f"{props.major}.{props.minor}"}


def goals(results: Dict) -> Dict:
    """The goals for LLaMA-130M at the paper's batch (GOAL_*), met or missed by how much."""
    rows = results.get("llama_130m", {})
    if "baseline" not in rows or "prac_full" not in rows:
        return {}
    out = {}
    base, full = rows["baseline"]["equal_batch"], rows["prac_full"]["equal_batch"]
    if "peak_allocated_bytes" in full:
        peak = full["peak_allocated_bytes"]
        out["peak_le_12GB"] = {"value_bytes": peak, "goal_bytes": GOAL_PEAK_BYTES, "met": peak <= GOAL_PEAK_BYTES,
                               "over_by_bytes": max(0, peak - GOAL_PEAK_BYTES)}
    for setting in ("prac_paper", "prac_full"):
        if setting in rows and "tokens_per_s" in rows[setting]["equal_batch"] and "tokens_per_s" in base:
            ratio = rows[setting]["equal_batch"]["tokens_per_s"] / base["tokens_per_s"]
            out[f"{setting}_speed_ge_95pct"] = {"ratio": ratio, "goal": GOAL_SPEED_RATIO,
                                                "met": ratio >= GOAL_SPEED_RATIO}
    return out


def print_table(results: Dict, seq: int) -> None:
    gib = 2 ** 30
    print(f"\n{'model':<12}{'setting':<12}{'batch':>6}{'peak GiB':>10}{'saved GiB':>11}{'tok/s':>10}"
          f"{'max batch':>11}{'tok/s@max':>11}")
    for model_name, rows in results.items():
        for setting, r in rows.items():
            e, m = r["equal_batch"], r.get("max_batch") or {}
            if "oom" in e:
                line = f"{e['batch']:>6}{'OOM':>10}{'':>11}{'':>10}"
            else:
                peak = f"{e['peak_allocated_bytes'] / gib:.2f}" if "peak_allocated_bytes" in e else "-"
                line = (f"{e['batch']:>6}{peak:>10}{e['saved_for_backward_bytes'] / gib:>11.3f}"
                        f"{e['tokens_per_s']:>10,.0f}")
            mb = f"{m['max_batch']}{'+' if m.get('capped_at_limit') else ''}" if m else "-"
            tps = f"{m['tokens_per_s']:,.0f}" if m.get("tokens_per_s") else "-"
            print(f"{model_name:<12}{setting:<12}{line}{mb:>11}{tps:>11}")
    print(f"(sequence {seq}; '+' = the search limit fits)")


def main(argv: Optional[List[str]] = None) -> int:
    p = parser(__doc__, batch=128, seq=256, batch_help="micro-batch of the equal-batch comparison")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (allocator, first refresh)")
    p.add_argument("--no-max-batch", dest="max_batch", action="store_false", help="skip the largest-batch search")
    p.add_argument("--search-limit", type=int, default=2048)
    p.add_argument("--resolution", type=int, default=8, help="bisection stops when the bracket is this narrow")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="a tiny model instead of the paper's (with --device cpu)")
    p.add_argument("--dry-run", action="store_true", help="= --device cpu --tiny --batch 4 --seq 32 --steps 1 "
                                                          "--warmup 1 --search-limit 8: checks the script")
    p.add_argument("--out", type=Path,  # no default: a dry run writes only when given one
                   help="JSON path (default benchmarks/results/paper_table.json on CUDA; a dry run writes only with --out)")
    args = p.parse_args(argv)
    if args.dry_run:
        args.device, args.tiny = "cpu", True
        args.batch, args.seq, args.steps, args.warmup, args.search_limit = 4, 32, 1, 1, 8
        args.resolution = 2
    for name in ("batch", "seq", "steps", "search_limit", "resolution"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}={getattr(args, name)}: accepted is an integer >= 1")
    if args.warmup < 1:
        p.error(f"--warmup={args.warmup}: accepted is an integer >= 1 (PRAC's first refresh must be untimed)")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("paper_table.py: error: this benchmark measures GPU memory and needs CUDA, but "
              "torch.cuda.is_available() is False; run it on a GPU machine, or pass --dry-run to check the "
              "script on CPU with a tiny model", file=sys.stderr)
        return 2
    if args.device == "cpu" and not args.tiny:
        print("paper_table.py: error: --device cpu measures no GPU memory and the paper's shapes take hours "
              "on CPU; add --tiny (or use --dry-run)", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    # bf16 on GPU (the paper's setting); float32 on CPU, where bf16 matmuls are slow and prove nothing here.
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    bench = Bench(device, dtype, args.seq, args.steps, args.warmup, args.tiny)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    t0 = time.perf_counter()
    results: Dict[str, Dict] = {}
    for model_name in args.models:
        results[model_name] = {}
        for setting in args.settings:
            row: Dict = {}
            try:
                row["equal_batch"] = bench.measure(model_name, setting, args.batch)
            except torch.cuda.OutOfMemoryError:
                row["equal_batch"] = {"batch": args.batch, "oom": True}
            if args.max_batch:
                found = bench.max_batch(model_name, setting, start=min(16, args.search_limit),
                                        limit=args.search_limit, resolution=args.resolution)
                if found["max_batch"] > 0:
                    at_max = bench.measure(model_name, setting, found["max_batch"])
                    found.update(tokens_per_s=at_max["tokens_per_s"],
                                 peak_allocated_bytes=at_max.get("peak_allocated_bytes"))
                row["max_batch"] = found
            results[model_name][setting] = row
            print(f"{model_name} {setting}: {json.dumps(row)}", file=sys.stderr)
    print_table(results, args.seq)
    import transformers

    out = {"dry_run": device.type != "cuda",
           "setting": {"seq": args.seq, "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
                       "dtype": str(dtype), "optimizer": "torch.optim.AdamW (states in the parameter dtype)",
                       "data": "uniform random token ids", "tiny": args.tiny},
           "prac_configs": {k: (v().to_dict() if v else None) for k, v in SETTINGS.items() if k in args.settings},
           "results": results, "goals_llama_130m": goals(results),
           "wall_s": time.perf_counter() - t0}
    path = args.out if args.out is not None else (RESULTS if device.type == "cuda" else None)
    if path is not None:
        write_result(path, "paper_table", out, **gpu_extras(device))
        print(f"wrote {path} ({out['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
