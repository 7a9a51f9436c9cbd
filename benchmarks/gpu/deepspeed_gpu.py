"""Peak GPU memory and tokens/s of LLaMA-350M under DeepSpeed ZeRO-2 and ZeRO-3, with and without
PRAC and PRAC's compressed activation offload (GPU only; one process per GPU).

    deepspeed --num_gpus 1 --module benchmarks.gpu.deepspeed_gpu [--batch 64 --seq 256 --steps 12]

Each variant runs in a fresh engine: `--steps` optimizer steps of random tokens (bf16, AdamW),
the first 2 untimed (warm-up, PRAC's first principal refresh). Reported: peak allocated memory
(torch.cuda.max_memory_allocated) over the timed steps, tokens/s over them, and the offload's
host traffic per step. A variant that runs out of memory is recorded as OOM.
Writes benchmarks/results/deepspeed_gpu.json with the GPU, driver and software versions.
"""

from __future__ import annotations

import gc
import os
import platform
import sys
import time

import torch

from benchmarks._harness import llama_config, parser, write_result  # noqa: E402

VARIANTS = [  # (name, zero stage, PRAC on, activation offload)
    ("zero2", 2, False, False), ("zero2+prac", 2, True, False), ("zero2+prac+offload", 2, True, True),
    ("zero3", 3, False, False), ("zero3+prac", 3, True, False), ("zero3+prac+offload", 3, True, True),
]


def ds_config(stage: int, batch: int, prac: bool, offload: bool) -> dict:
    cfg = {
        "train_micro_batch_size_per_gpu": batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "bf16": {"enabled": True},
        # torch_adam: torch.optim.AdamW, so the run needs no JIT build of DeepSpeed's fused Adam.
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "betas": [0.9, 0.95], "eps": 1e-8,
                                                  "weight_decay": 0.0, "torch_adam": True}},
        "zero_optimization": {"stage": stage, "overlap_comm": True, "contiguous_gradients": True},
        "steps_per_print": 10**9,
    }
    if prac:
        cfg["prac"] = {"principal_update_interval": 500, "random_update_interval": 500,
                       "offload": {"device": "cpu" if offload else "none", "pin_memory": True}}
    return cfg


def run_variant(args, stage: int, prac: bool, offload: bool) -> dict:
    import deepspeed
    from transformers import LlamaForCausalLM

    import prac_dist.deepspeed as pds

    cfg = ds_config(stage, args.batch, prac, offload)
    hf = llama_config("llama_350m", max_positions=args.seq)  # the paper's LLaMA-350M
    torch.manual_seed(0)
    if stage == 3:
        with deepspeed.zero.Init(config_dict_or_path=cfg):
            model = LlamaForCausalLM(hf)
    else:
        model = LlamaForCausalLM(hf)
    engine, *_ = pds.initialize(model=model, model_parameters=model.parameters(), config=cfg)
    device = engine.device
    x = torch.randint(0, hf.vocab_size, (args.batch, args.seq), device=device)
    offloader = getattr(engine.module, "_prac_offload", None)
    for i in range(args.steps):
        if i == 2:  # warm-up done: timed and measured from here
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            if offloader is not None:
                offloader.reset_stats()
            start = time.perf_counter()
        loss = engine(input_ids=x, labels=x).loss
        engine.backward(loss)
        engine.step()
    torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    timed = args.steps - 2
    out = {"peak_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30,
           "tokens_per_s": timed * args.batch * args.seq / elapsed, "final_loss": float(loss.detach())}
    if offloader is not None:
        out["offload_d2h_gib_per_step"] = offloader.stats["d2h_bytes"] / timed / 2**30
    del engine, model
    return out


def main() -> int:
    p = parser(__doc__, out="deepspeed_gpu.json", batch=64, seq=256, batch_help="sequences per GPU per step")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--local_rank", type=int, default=0)  # appended by the deepspeed launcher
    p.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("deepspeed_gpu.py needs a CUDA GPU; nothing measured", file=sys.stderr)
        return 1
    import deepspeed
    import transformers  # noqa: F401 - its version goes into the result's environment

    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", args.local_rank)))
    deepspeed.init_distributed()
    rows = []
    for name, stage, prac, offload in VARIANTS:
        if args.only and name not in args.only:
            continue
        try:
            row = run_variant(args, stage, prac, offload)
        except torch.cuda.OutOfMemoryError:
            row = {"oom": True}
        gc.collect()
        torch.cuda.empty_cache()
        rows.append({"variant": name, **row})
        if torch.distributed.get_rank() == 0:
            shown = "OOM" if row.get("oom") else (f"{row['peak_allocated_gib']:.2f} GiB  {row['tokens_per_s']:.0f} tok/s"
                                                 f"  loss {row['final_loss']:.3f}")
            print(f"{name:<22}{shown}", flush=True)

    if torch.distributed.get_rank() == 0:
        write_result(args.out, "deepspeed_gpu", {
            "model": "LLaMA-350M", "batch_per_gpu": args.batch, "seq": args.seq, "steps_timed": args.steps - 2,
            "world_size": torch.distributed.get_world_size(), "rows": rows}, host=platform.node())
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
