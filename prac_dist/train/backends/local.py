"""LocalBackend: one process, plain PyTorch (CPU or one GPU).

AdamW with decoupled weight decay on matrices only, linear warmup then cosine
decay to min_lr_ratio * lr, global-norm clipping, gradient accumulation, bf16
autocast on GPU and float32 on CPU. PRAC's subspace schedule advances through
`hook_optimizer`, i.e. exactly once per optimizer step.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import nn

from prac_dist.checkpoint.files import CorruptCheckpoint, read_file
from prac_dist.train.backends import TrainBackend
from prac_dist.train.config import ConfigError
from prac_dist.train.optim import OptimizerSpec, build_adamw, warmup_cosine

__all__ = ["LocalBackend"]


class LocalBackend(TrainBackend):
    name = "local"
    runs_before_setup = True

    def __init__(self, device: Optional[str] = None, precision: Optional[str] = None,
                 compile_backend: Optional[str] = None):
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"train.device={device!r}: CUDA is not available on this machine")
        if precision is None:
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        self.precision = precision
        self.compile_backend = compile_backend
        self.rank, self.world_size, self.local_rank = 0, 1, 0
        self._prac_handle = None
        self._micro = 0

    def setup(self, model: nn.Module, prac_config: Optional[Any], opt: OptimizerSpec) -> None:
        import prac_dist

        # Move first, then patch: apply_prac keeps the Parameter objects, and any subspace buffers it
        # creates are then born on the training device.
        model = model.to(self.device)
        if prac_config is not None:
            model = prac_dist.apply_prac(model, prac_config)
        if self.compile_backend is not None:  # per decoder block, as under FSDP2 (torchtitan's unit)
            from prac_dist.distributed import compile_blocks

            compile_blocks(model, self.compile_backend)
        self.model = model
        self.model.train()
        self.opt_spec = opt
        self.optimizer = build_adamw(self.model, opt)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: warmup_cosine(s, opt.warmup_steps, opt.max_steps, opt.min_lr_ratio),
        )
        if prac_config is not None:
            self._prac_handle = prac_dist.hook_optimizer(self.optimizer, self.model)
        self.prac = prac_config is not None

    def forward_context(self):
        """bf16 autocast on GPU; float32 on CPU (CPU bf16 matmuls are slower than fp32 on most CPUs)."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.opt_spec.grad_accum).backward()
        self._micro += 1

    def step(self) -> Dict[str, float]:
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.opt_spec.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.opt_spec.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()  # the PRAC post-hook advances the subspace schedule here
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._micro = 0
        return {"lr": float(lr), "grad_norm": float(norm)}

    def save(self, path: Path, extra: Dict[str, Any]) -> None:
        import prac_dist

        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "prac": prac_dist.prac_state_dict(self.model) if self.prac else None,
            "extra": extra,
        }
        torch.save(state, Path(path) / "local.pt")

    def load(self, path: Path) -> Dict[str, Any]:
        import prac_dist

        try:
            state = read_file(Path(path) / "local.pt", map_location=self.device)
        except CorruptCheckpoint as exc:  # --resume names the step folder it falls back from
            raise CorruptCheckpoint(f"{path}: unreadable: {str(exc).replace(str(Path(path)) + os.sep, '')}") from None
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.prac:
            if state["prac"] is None:
                raise ConfigError("--resume: the checkpoint was written without PRAC but this run uses PRAC")
            prac_dist.load_prac_state_dict(self.model, state["prac"])
        elif state["prac"] is not None:
            raise ConfigError("--resume: the checkpoint was written with PRAC but this run has --no-prac")
        return state["extra"]

    def close(self) -> None:
        if self._prac_handle is not None:
            self._prac_handle.remove()
            self._prac_handle = None
