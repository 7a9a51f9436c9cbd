"""FSDPBackend: the TrainBackend behind `prac-train --fsdp` (PyTorch FSDP2, `fully_shard`)."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

from prac_dist.distributed import close_distributed, init_distributed
from prac_dist.fsdp import load_checkpoint, parallelize, save_checkpoint
from prac_dist.train import meta_init
from prac_dist.train.backends import TrainBackend
from prac_dist.train.optim import OptimizerSpec, build_adamw, warmup_cosine

__all__ = ["FSDPBackend", "MIXED_PRECISION"]

# Parameters are all-gathered and computed in param_dtype; gradients are reduce-scattered
# (averaged over ranks) in float32, so the average of W bf16 gradients does not lose bits.
# The keys are backend.fsdp_mixed_precision's choices (prac_dist/train/config.py).
MIXED_PRECISION = {
    "fp32": None,
    "bf16": MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32),
}


class FSDPBackend(TrainBackend):
    """FSDP2 data parallelism over all ranks of the job (one 1-D mesh), with PRAC inside.

    mixed_precision: 'fp32' (float32 throughout) or 'bf16' (bf16 params/compute, fp32 reduce).
    cpu_offload: keep sharded parameters, gradients and optimizer state in CPU memory.
    activation_checkpointing: recompute each decoder block in backward (non-reentrant).
    compile_backend: torch.compile each decoder block with this backend before sharding it (None: eager).
    """

    name = "fsdp"
    materializes_model = True

    def __init__(self, mixed_precision: str = "fp32", cpu_offload: bool = False,
                 activation_checkpointing: bool = False, compile_backend: Optional[str] = None):
        if mixed_precision not in MIXED_PRECISION:
            hint = " (float32 throughout is 'fp32')" if mixed_precision == "none" else ""
            raise ValueError(f"mixed_precision={mixed_precision!r}: accepted is one of {sorted(MIXED_PRECISION)}{hint}")
        for field, value in (("cpu_offload", cpu_offload), ("activation_checkpointing", activation_checkpointing)):
            if not isinstance(value, bool):
                raise ValueError(f"{field}={value!r}: accepted is True or False")
        self.mixed_precision = mixed_precision
        self.cpu_offload = cpu_offload
        self.activation_checkpointing = activation_checkpointing
        self.compile_backend = compile_backend
        self._owns_process_group = False
        self._prac = False

    def setup(self, model: nn.Module, prac_config: Optional[Any], opt: OptimizerSpec) -> None:
        self._owns_process_group = not (dist.is_available() and dist.is_initialized())
        env, self.device = init_distributed()
        self.rank, self.world_size, self.local_rank = env.rank, env.world_size, env.local_rank
        mesh = init_device_mesh(self.device.type, (self.world_size,))
        on_meta = meta_init.has_meta_params(model)
        if not on_meta:
            # Every rank must shard the same weights: rank 0's initialisation wins (FSDP1's sync_module_states).
            _broadcast_from_rank0(model, self.device)
        # pin_memory needs CUDA; on a CPU-only job the offload policy keeps everything where it is.
        offload = CPUOffloadPolicy(pin_memory=self.device.type == "cuda") if self.cpu_offload else None
        self.model = parallelize(model, prac_config, mesh, mp_policy=MIXED_PRECISION[self.mixed_precision],
                                 offload_policy=offload, activation_checkpointing=self.activation_checkpointing,
                                 compile_backend=self.compile_backend)
        if on_meta:
            # Sharded on meta: each rank now allocates and initialises its own shard only (offloaded
            # shards live on the CPU), with the weights of the single-process build (meta_init).
            meta_init.materialize(self.model, torch.device("cpu") if self.cpu_offload else self.device)
        self._prac = prac_config is not None
        self._opt = opt
        # The single-process backend's optimizer and schedule, so --fsdp and local runs are comparable
        # step for step; AdamW then updates each rank's shard (DTensor) of every parameter.
        self.optimizer = build_adamw(self.model, opt)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: warmup_cosine(s, opt.warmup_steps, opt.max_steps, opt.min_lr_ratio))

    def forward_context(self):
        """No autocast: FSDP2's MixedPrecisionPolicy casts parameters and inputs per module."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        # FSDP2 reduce-scatters every micro-batch into the sharded gradient (sum over micro-batches,
        # mean over ranks); dividing by grad_accum makes the window a mean, as on one process.
        (loss / self._opt.grad_accum).backward()

    def step(self) -> Dict[str, float]:
        max_norm = self._opt.grad_clip if self._opt.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if hasattr(grad_norm, "full_tensor"):  # a DTensor: the norm over all ranks' shards
            grad_norm = grad_norm.full_tensor()
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self._prac:
            from prac_dist import step as prac_step

            prac_step(self.model)  # once per optimizer step: advances the T1/T2 refresh schedule
        return {"lr": float(lr), "grad_norm": float(grad_norm)}

    def save(self, path: Path, extra: Dict[str, Any]) -> None:
        save_checkpoint(path, self.model, self.optimizer, scheduler=self.scheduler, extra=extra)

    def load(self, path: Path) -> Dict[str, Any]:
        return load_checkpoint(path, self.model, self.optimizer, scheduler=self.scheduler)

    def close(self) -> None:
        if self._owns_process_group:
            close_distributed()
            self._owns_process_group = False


def _broadcast_from_rank0(model: nn.Module, device: torch.device) -> None:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            # NCCL only moves device tensors: stage through `device` (a no-op view when the tensor
            # already lives there), then copy back in place.
            staged = tensor.detach().to(device)
            dist.broadcast(staged, src=0)
            if staged.data_ptr() != tensor.data_ptr():
                tensor.copy_(staged)
