"""Peak GPU memory and tokens/s of LLaMA-350M under FSDP2, with and without PRAC.

    torchrun --nproc_per_node NGPU -m benchmarks.gpu.fsdp_gpu [--micro-batch 32 --seq 256 --steps 20]

Each configuration builds the model (the paper's LLaMA-350M shape: hidden 1024, 24 layers,
ffn 2736, vocabulary 32000), applies prac_dist.fsdp.parallelize (bf16 params, fp32 reduce),
trains `--warmup` untimed steps and `--steps` timed steps of AdamW on random tokens, and records
torch.cuda.max_memory_allocated and tokens/s over all ranks. Rank 0 prints a table and writes
benchmarks/results/fsdp_gpu.json with the GPU, driver and software versions. Needs CUDA.
"""

from __future__ import annotations

import gc
import sys
import time

import torch
import torch.distributed as dist

from benchmarks._harness import parser, write_result  # noqa: E402
from prac_dist.distributed import close_distributed  # noqa: E402



def build(preset: str):
    from prac_dist.train.config import ModelConfig
    from prac_dist.train.models import build_model

    return build_model(ModelConfig(preset=preset), seq_len=1024, seed=0)


def run_one(label: str, prac, args, mesh, device) -> dict:
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from prac_dist import step as prac_step
    from prac_dist.fsdp import parallelize

    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    model = parallelize(build(args.preset), prac, mesh,
                        mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32),
                        activation_checkpointing=args.activation_checkpointing)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    vocab = model.config.vocab_size
    gen = torch.Generator(device="cpu").manual_seed(dist.get_rank())
    row = {"label": label, "status": "ok"}
    try:
        for i in range(args.warmup + args.steps):
            if i == args.warmup:
                torch.cuda.synchronize(device)
                start = time.perf_counter()
            x = torch.randint(0, vocab, (args.micro_batch, args.seq), generator=gen).to(device)
            model(input_ids=x, labels=x).loss.backward()
            optim.step()
            optim.zero_grad(set_to_none=True)
            if prac is not None:
                prac_step(model)
        torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        tokens = args.steps * args.micro_batch * args.seq * dist.get_world_size()
        row.update(tokens_per_s=tokens / elapsed, step_s=elapsed / args.steps)
    except torch.cuda.OutOfMemoryError:
        row["status"] = "OOM"
    peak = torch.tensor([torch.cuda.max_memory_allocated(device)], device=device, dtype=torch.float64)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    row["peak_gib_max_rank"] = float(peak) / 2**30
    del model, optim
    return row


def main(argv=None) -> int:
    ap = parser(__doc__, out="fsdp_gpu.json", seq=256)
    ap.add_argument("--preset", default="llama_350m")
    ap.add_argument("--micro-batch", type=int, default=32, help="sequences per rank per step")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--activation-checkpointing", action="store_true")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/gpu/fsdp_gpu.py needs CUDA (it measures GPU memory); nothing was measured", file=sys.stderr)
        return 2
    from torch.distributed.device_mesh import init_device_mesh

    from prac_dist import PRACConfig
    from prac_dist.fsdp import init_distributed

    env, device = init_distributed()
    mesh = init_device_mesh("cuda", (env.world_size,))
    rows = [run_one("baseline", None, args, mesh, device),
            run_one("prac (paper)", PRACConfig.paper(), args, mesh, device)]
    if env.rank == 0:
        result = {"config": vars(args) | {"out": str(args.out)}, "world_size": env.world_size, "rows": rows}
        print(f"{'run':<24} {'status':>6} {'peak GiB':>9} {'tokens/s':>10} {'s/step':>7}")
        for r in rows:
            print(f"{r['label']:<24} {r['status']:>6} {r['peak_gib_max_rank']:>9.2f} "
                  f"{r.get('tokens_per_s', float('nan')):>10.0f} {r.get('step_s', float('nan')):>7.3f}")
        write_result(args.out, "fsdp_gpu", result)
        print(f"wrote {args.out}")
    close_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
