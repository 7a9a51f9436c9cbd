"""One rank of a 2-rank CPU (gloo) torchtitan training run of the Llama3 debug model, with and without PRAC.

Driven from tests/integrations/test_torchtitan.py under torchrun. torchtitan's own pieces do the work: its
model registry (with PRACConverter in `converters`), its parallelize function (activation checkpointing,
per-block compile, FSDP2 over the two ranks), its OptimizersContainer and LR schedulers, and its DCP
CheckpointManager (PRAC's per-rank state attached by attach_prac). Its Trainer is not used: it builds
on the meta device and runs FlexAttention, whose backward needs a GPU (see the module docstring of
prac_dist/integrations/torchtitan.py); the loop below is the few lines of Trainer.train_step it needs.

Three runs in one process, each building everything afresh: baseline (no PRAC) for --steps, PRAC for
--steps saving a checkpoint at --save-at, and PRAC resumed from that checkpoint to --steps. Rank 0
writes the per-step losses (mean over ranks) as JSON to --out.
"""

import argparse
import json
import os

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule

import torchtitan.distributed.parallel_dims as titan_dims
from torchtitan.components.checkpoint import CheckpointManager
from torchtitan.components.optimizer import LRSchedulersContainer, default_adamw
from torchtitan.config import CompileConfig, ParallelismConfig, TrainingConfig
from torchtitan.distributed.activation_checkpoint import FullAC
from torchtitan.distributed.parallel_dims import ParallelDims

from benchmarks._tiny_models import torchtitan_spec
from prac_dist import PRACConfig
from prac_dist.distributed import close_distributed
from prac_dist.integrations.torchtitan import PRACConverter, attach_prac

VOCAB, USED, SEQ, BATCH = 2048, 64, 64, 4


def batch(step: int, rank: int) -> torch.Tensor:
    """A learnable stream over the first USED ids: each token a fixed function of the previous one, 1 in 8
    replaced at random. Small enough that 30 steps reach the noise floor, where the losses compare."""
    g = torch.Generator().manual_seed(1000 * step + rank)
    ids = torch.empty(BATCH, SEQ + 1, dtype=torch.long)
    ids[:, 0] = torch.randint(0, USED, (BATCH,), generator=g)
    for t in range(1, SEQ + 1):
        ids[:, t] = (ids[:, t - 1] * 37 + 11) % USED
    noise = torch.rand(BATCH, SEQ + 1, generator=g) < 0.125
    ids[noise] = torch.randint(0, USED, (int(noise.sum()),), generator=g)
    return ids


def build(prac: bool, args, dims: ParallelDims, folder: str):
    converters = [PRACConverter.Config(prac=PRACConfig())] if prac else None
    spec = torchtitan_spec("llama3", converters=converters)
    torch.manual_seed(0)
    model = spec.model.build()  # with PRACConverter: initialised and patched here
    if not prac:
        model.init_states(buffer_device=None)
    compile_config = CompileConfig(enable=args.compile, backend="aot_eager", components=["model"])
    model = spec.parallelize_fn(model, parallel_dims=dims, training=TrainingConfig(local_batch_size=BATCH, seq_len=SEQ,
                                                                         mixed_precision_param="float32"),
                                parallelism=ParallelismConfig(data_parallel_shard_degree=2,
                                                              spmd_backend="partial_dtensor"),
                                compile_config=compile_config, ac_config=FullAC.Config(), dump_folder=folder)
    for module in model.modules():  # gloo has no PREMUL_SUM, which torchtitan's undivided reduce-scatter uses
        if isinstance(module, FSDPModule):
            module.set_force_sum_reduction_for_comms(True)
    optimizers = default_adamw(lr=2e-3).build(model_parts=[model])
    schedulers = LRSchedulersContainer.Config(warmup_steps=2).build(optimizers=optimizers, training_steps=args.steps)
    checkpointer = CheckpointManager.Config(enable=True, folder="ckpt", interval=args.save_at,
                                            last_save_model_only=False).build(
        dataloader=None, model_parts=[model], optimizers=optimizers, lr_schedulers=schedulers, states={},
        sd_adapter=None, base_folder=folder)
    if prac:
        attach_prac(model, optimizers, checkpointer)
    return model, optimizers, schedulers, checkpointer


def train(prac: bool, args, dims, folder: str, start: int = 0) -> list:
    model, optimizers, schedulers, checkpointer = build(prac, args, dims, folder)
    if start:
        assert checkpointer.load(step=start), f"no checkpoint at step {start} in {folder}"
    rank, losses = dist.get_rank(), []
    for step in range(start + 1, args.steps + 1):
        ids = batch(step, rank)
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
        (loss / dist.get_world_size()).backward()  # gradients are summed over ranks (torchtitan's convention)
        optimizers.step()
        schedulers.step()
        optimizers.zero_grad()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(mean.item() / dist.get_world_size())
        if step == args.save_at and not start:
            checkpointer.save(curr_step=step)
    checkpointer.close()
    return losses


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--save-at", type=int, default=15)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--folder", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    titan_dims.device_type = "cpu"  # torchtitan picks "cuda" when it finds no accelerator
    dims = ParallelDims(dp_replicate=1, dp_shard=2, cp=1, tp=1, pp=1, ep=1, world_size=2,
                        spmd_backend="partial_dtensor")
    dims.build_mesh()
    result = {"baseline": train(False, args, dims, os.path.join(args.folder, "baseline")),
              "prac": train(True, args, dims, os.path.join(args.folder, "prac"))}
    result["resumed"] = train(True, args, dims, os.path.join(args.folder, "prac"), start=args.save_at)
    if dist.get_rank() == 0:
        with open(args.out, "w") as f:
            json.dump(result, f)
    close_distributed()


if __name__ == "__main__":
    main()
