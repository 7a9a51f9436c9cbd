"""Peak host memory per rank for building and sharding a prac-train preset under FSDP2 or DeepSpeed ZeRO-3.

    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 -m benchmarks.memory.init_memory --preset llama_1b
    DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 deepspeed --num_gpus 2 --module benchmarks.memory.init_memory \
        --preset llama_1b --deepspeed configs/ds/zero3.json --shard-only

With --deepspeed --shard-only, each rank builds and partitions only (DeepSpeedBackend.partition: build_model
on meta, then each parameter partitioned by deepspeed.zero.Init, only this rank's partition initialised):
the number the 0.6 limit is about. PRAC, which allocates no parameter memory, comes after it in setup(),
so these rows say prac=false. With --deepspeed alone, each rank runs prac-train's whole DeepSpeed setup
(partition, PRAC, deepspeed.initialize): that number adds the engine's partitioned fp32 master weights
and Adam moments, which FSDP's AdamW creates lazily at the first step.

Each rank runs what `prac-train --fsdp` runs before its first step: build_model (parameters on the
meta device), FSDPBackend.setup (PRAC on the meta model, fully_shard per block + root, then each rank
materialises and initialises its own shard; the AdamW states are created lazily at the first step, so
they are not in this number). The peak is the kernel's VmHWM of the rank's process: reset (clear_refs
5) after imports and process-group setup, so the row's `peak_above_start_bytes` is what building and
sharding added; `peak_bytes` is the absolute peak including the Python/torch/transformers imports.
`ratio` = peak_above_start_bytes / the full model's float32 bytes (at most 0.6 is the bound, `limit_ratio`; a rank
holds 1/W of the weights plus one block of draws, see prac_dist/train/meta_init.py).

--legacy builds the full model on every rank first (no meta init: CPU build, broadcast
from rank 0, shard), for comparison. --compare then gathers every parameter after init and checks it
against the single-process CPU build of the same seed, bit for bit (rank 0 builds it after the peak
was read). Results: rank 0 writes benchmarks/results/init_memory.json (rows keyed by preset and path,
kept from earlier runs) or --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from benchmarks._harness import llama, parser, write_result  # noqa: E402


def _status_bytes(field: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(preset: str, legacy: bool, prac: bool, seed: int = 0, ds_config=None, shard_only: bool = False):
    from prac_dist.train.config import ModelConfig
    from prac_dist.train.models import build_model
    from prac_dist.train.optim import OptimizerSpec

    cfg = ModelConfig(preset=preset)
    prac_config = None
    if prac:
        from prac_dist import PRACConfig

        prac_config = PRACConfig()
    _import_model_code(prac)
    backend = _backend(ds_config)
    opt = OptimizerSpec(lr=1e-3, weight_decay=0.0, betas=(0.9, 0.95), eps=1e-8, grad_clip=1.0,
                        warmup_steps=0, max_steps=1, min_lr_ratio=0.1, grad_accum=1)
    dist.barrier()
    reset = _reset_peak()
    start = _status_bytes("VmRSS")
    t0 = time.perf_counter()
    model = build_model(cfg, seq_len=256, seed=seed, materialize=legacy)
    unique = {id(p): p for p in model.parameters()}.values()
    full_bytes = sum(p.numel() * 4 for p in unique)
    largest = max(p.numel() * 4 for p in unique)
    if shard_only:  # DeepSpeed: stop where zero.Init has partitioned the last parameter (PRAC comes after)
        backend.partition(model, None, opt)
        backend.model = model
    else:
        backend.setup(model, prac_config, opt)
    seconds = time.perf_counter() - t0
    peak = _status_bytes("VmHWM")
    local_bytes = sum(_local(p).nbytes for p in _unwrapped(backend).parameters())
    row = {"rank": dist.get_rank(), "peak_bytes": peak, "start_rss_bytes": start, "peak_reset": reset,
           "peak_above_start_bytes": peak - start, "local_param_bytes": local_bytes,
           "largest_param_bytes": largest, "seconds": round(seconds, 2)}
    return backend, cfg, full_bytes, row


def _backend(ds_config):
    if ds_config is None:
        from prac_dist.train.backends.fsdp import FSDPBackend

        return FSDPBackend()
    from prac_dist.train.backends.deepspeed import DeepSpeedBackend

    return DeepSpeedBackend(str(ds_config), micro_batch_size=1)


def _unwrapped(backend) -> torch.nn.Module:
    """The model itself: DeepSpeed's engine wraps it after setup(), not after partition()."""
    return getattr(backend.model, "module", backend.model)


def _local(param: torch.Tensor) -> torch.Tensor:
    """What this rank holds of `param`: an FSDP2 DTensor's shard, a ZeRO-3 partition, or all of it."""
    if hasattr(param, "to_local"):
        return param.to_local()
    return param.ds_tensor if hasattr(param, "ds_tensor") else param


def _gathered(param: torch.Tensor) -> torch.Tensor:
    """The whole parameter on every rank (collective: all ranks call it in the same order)."""
    if hasattr(param, "full_tensor"):
        return param.full_tensor()
    if hasattr(param, "ds_tensor"):
        import deepspeed

        with deepspeed.zero.GatheredParameters([param]):
            return param.detach().clone()
    return param.detach()


def _import_model_code(prac: bool) -> None:
    """Import what the build imports lazily, before the peak is reset: code is not model memory."""
    import transformers.models.llama.modeling_llama  # noqa: F401

    import prac_dist.fsdp.parallelize  # noqa: F401
    if prac:
        from prac_dist import PRACConfig, apply_prac

        tiny = llama("llama_probe")
        apply_prac(tiny, PRACConfig())  # the patching modules and their kernels' imports


def compare(backend, cfg, seed: int) -> dict:
    """Every parameter gathered (all ranks take part) against rank 0's single-process build."""
    from prac_dist.train.meta_init import _canonical
    from prac_dist.train.models import build_model

    reference = build_model(cfg, seq_len=256, seed=seed) if dist.get_rank() == 0 else None
    ref_params = dict(reference.named_parameters()) if reference is not None else {}
    mismatched, max_diff, count = [], 0.0, 0
    for name, param in _unwrapped(backend).named_parameters():
        full = _gathered(param)
        if reference is None:
            continue
        ref = ref_params[_canonical(name)].detach()
        count += 1
        if not torch.equal(full, ref):
            mismatched.append(name)
            max_diff = max(max_diff, (full - ref).abs().max().item())
    return {"parameters_compared": count, "mismatched": mismatched[:5], "max_abs_diff": max_diff,
            "identical": not mismatched and count == len(ref_params)}


def main() -> None:
    ap = parser(__doc__, out="init_memory.json", seed=0)
    ap.add_argument("--preset", default="llama_1b")
    ap.add_argument("--legacy", action="store_true", help="full CPU build on every rank, then broadcast + shard")
    ap.add_argument("--no-prac", action="store_true", help="shard the plain model (default: PRACConfig() applied)")
    ap.add_argument("--compare", action="store_true", help="check the gathered weights against the CPU build")
    ap.add_argument("--deepspeed", type=Path, default=None, metavar="CONFIG",
                    help="measure DeepSpeedBackend with this JSON (ZeRO-3: partitioned on build) instead of FSDP2")
    ap.add_argument("--shard-only", action="store_true",
                    help="DeepSpeed: build and partition only (DeepSpeedBackend.partition), not deepspeed.initialize, "
                         "which adds the partitioned fp32 master weights and Adam moments")
    ap.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # the deepspeed launcher passes it
    args = ap.parse_args()

    from prac_dist.distributed import init_distributed

    init_distributed()
    if args.shard_only and args.deepspeed is None:
        ap.error("--shard-only: accepted only with --deepspeed (FSDP2's setup is building and sharding already)")
    backend, cfg, full_bytes, row = measure(args.preset, args.legacy, not args.no_prac, args.seed, args.deepspeed,
                                            args.shard_only)
    rows = [None] * dist.get_world_size()
    dist.all_gather_object(rows, row)
    check = compare(backend, cfg, args.seed) if args.compare else None
    if dist.get_rank() == 0:
        worst = max(r["peak_above_start_bytes"] for r in rows)
        kind = "fsdp" if args.deepspeed is None else f"deepspeed:{args.deepspeed.name}"
        result_row = {"preset": args.preset, "backend": kind, "path": "legacy" if args.legacy else "meta",
                      "prac": not (args.no_prac or args.shard_only), "phase": _phase(args),
                      "world_size": len(rows), "full_fp32_bytes": full_bytes, "max_peak_above_start_bytes": worst,
                      "ratio": round(worst / full_bytes, 4), "ranks": rows}
        if check is not None:
            result_row["compare"] = check
        _print(result_row)
        launcher = "torchrun --nproc_per_node" if args.deepspeed is None else "deepspeed --num_gpus"
        _write(args.out, result_row, " ".join([launcher, str(len(rows))] + sys.argv))
    backend.close()


def _print(row: dict) -> None:
    gib = 2 ** 30
    print(f"{row['preset']} {row['backend']} {row['path']} prac={row['prac']} on {row['world_size']} ranks: "
          f"full fp32 model {row['full_fp32_bytes'] / gib:.2f} GiB")
    print(f"{'rank':>4} {'peak GiB':>9} {'start GiB':>9} {'added GiB':>9} {'shard GiB':>9} {'s':>6}")
    for r in row["ranks"]:
        print(f"{r['rank']:>4} {r['peak_bytes'] / gib:>9.3f} {r['start_rss_bytes'] / gib:>9.3f} "
              f"{r['peak_above_start_bytes'] / gib:>9.3f} {r['local_param_bytes'] / gib:>9.3f} {r['seconds']:>6.1f}")
    print(f"worst rank adds {row['ratio']:.3f} x the full fp32 model" +
          (f"; weights identical to the CPU build: {row['compare']['identical']}" if "compare" in row else ""))


def _phase(args) -> str:
    if args.deepspeed is None:
        return "build+shard"  # FSDP2's setup ends with the shards: AdamW states come at the first step
    return "build+shard" if args.shard_only else "build+shard+deepspeed.initialize"


def _key(row: dict):
    return row["preset"], row.get("backend", "fsdp"), row["path"], row["prac"], row.get("phase")


def _write(path: Path, row: dict, command: str) -> None:
    rows = []
    if path.is_file():
        rows = [r for r in json.loads(path.read_text()).get("rows", [])
                if _key(r) != _key(row)]
    rows.append(dict(row, command=command))
    write_result(path, "init_memory", {"rows": rows, "limit_ratio": 0.6},
                 note=f"{os.cpu_count()} cores shared with other jobs; gloo process group")


if __name__ == "__main__":
    main()
