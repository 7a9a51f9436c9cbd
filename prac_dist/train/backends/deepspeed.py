"""DeepSpeedBackend: the TrainBackend behind `prac-train --deepspeed configs/ds/<name>.json`.

Launch with `deepspeed --num_gpus N prac-train ...` (or `-H hostfile` for several nodes),
or `mpirun -np N prac-train ...`: ranks come from the launcher's environment, or from
mpi4py when it is missing (`deepspeed.init_distributed(auto_mpi_discovery=True)`).

Which PRAC settings run: `prac_config`, as prac-train resolved it from the YAML and the JSON's
"prac" section (one route: prac_dist/train/config.py, docs/deepspeed.md); None = no PRAC. The
section reaches DeepSpeed never; only its JSON-only "offload" object is read here.

"auto" values in the DeepSpeed JSON (the Hugging Face convention) are filled from prac-train's
settings: gradient_accumulation_steps, train_micro_batch_size_per_gpu, train_batch_size,
gradient_clipping, optimizer lr/betas/eps/weight_decay, and bf16/fp16 "enabled" (bf16 on CUDA,
float32 on CPU, as the local backend). An explicit value that contradicts prac-train's
(say gradient_accumulation_steps: 4 with --grad-accum 2) is an error naming both.
Without an "optimizer" section the backend builds the local backend's AdamW and warmup-cosine
schedule, so `--deepspeed` and local runs are comparable step for step.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import nn

from prac_dist.deepspeed.config import PRACSection, load_ds_config, parse_prac_section
from prac_dist.distributed import close_distributed, discover_env
from prac_dist.train import meta_init
from prac_dist.train.backends import TrainBackend
from prac_dist.train.config import ConfigError
from prac_dist.train.optim import OptimizerSpec, build_adamw, warmup_cosine

__all__ = ["DeepSpeedBackend"]

logger = logging.getLogger(__name__)
_TAG = "deepspeed"  # checkpoint tag inside each prac-train step_N folder


class DeepSpeedBackend(TrainBackend):
    name = "deepspeed"

    def __init__(self, ds_config: str, micro_batch_size: Optional[int] = None):
        # Read and validate now: a bad "prac" section stops the run before the model is even built.
        try:
            self.ds_config = load_ds_config(ds_config)
            self.section: Optional[PRACSection] = parse_prac_section(self.ds_config)
        except ValueError as exc:
            raise ConfigError(f"--deepspeed {ds_config}: {exc}") from None
        self.ds_config_source = str(ds_config)
        # ZeRO-3: prac-train hands setup() a preset still on the meta device and each rank keeps only its
        # partitions (_partition_on_build). Stages 0-2 replicate the parameters anyway: full CPU build.
        self.materializes_model = _zero_stage(self.ds_config) == 3
        self.micro_batch_size = micro_batch_size
        self.prac = False
        self._owns_process_group = False

    # ---- setup --------------------------------------------------------------------------------
    def setup(self, model: nn.Module, prac_config: Optional[Any], opt: OptimizerSpec) -> None:
        from prac_dist.deepspeed.engine import initialize

        config = self.partition(model, prac_config, opt)
        optimizer = scheduler = None
        if "optimizer" not in config:
            optimizer = build_adamw(model, opt)
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda s: warmup_cosine(s, opt.warmup_steps, opt.max_steps, opt.min_lr_ratio))
        if prac_config is not None and (self.section is None or self.section.enabled):
            from prac_dist.deepspeed.engine import prepare_model

            # The resolved settings plus the JSON's offload; initialize() wires schedule + checkpoints.
            offload = self.section.offload if self.section is not None else PRACSection().offload
            prepare_model(model, PRACSection(enabled=True, config=prac_config, offload=offload))
        self.model, self.optimizer, _, self.scheduler = initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config,
            model_parameters=None if optimizer is not None else [p for p in model.parameters() if p.requires_grad])
        from prac_dist import is_prac_model

        self.prac = is_prac_model(self.model.module)
        if self.rank == 0:
            zero = config.get("zero_optimization", {}).get("stage", 0)
            logger.info("DeepSpeed ZeRO-%s on %d ranks, PRAC %s", zero, self.world_size, "on" if self.prac else "off")

    def partition(self, model: nn.Module, prac_config: Optional[Any], opt: OptimizerSpec) -> Dict[str, Any]:
        """Building and sharding, the first half of setup(): the process group, the resolved DeepSpeed config
        (returned), and under ZeRO-3 a meta-built model's partitions. benchmarks/memory/init_memory.py measures it."""
        import deepspeed
        import torch.distributed as dist
        from deepspeed.accelerator import get_accelerator

        self._owns_process_group = not (dist.is_available() and dist.is_initialized())
        accel = get_accelerator()
        self.local_rank = discover_env().local_rank
        if accel.device_name() != "cpu":
            accel.set_device(self.local_rank)  # before the process group, so NCCL binds the right device
        # Under mpirun, DeepSpeed's MPI discovery overwrites MASTER_PORT with distributed_port: pass the
        # user's (`mpirun -x MASTER_PORT=...`) through, so two jobs on one node do not collide on 29500.
        deepspeed.init_distributed(dist_backend=accel.communication_backend_name(), auto_mpi_discovery=True,
                                   distributed_port=int(os.environ.get("MASTER_PORT", 29500)))
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.device = torch.device(accel.device_name(self.local_rank))
        self._opt = opt

        config = self._resolved_config(prac_config, opt)
        if meta_init.has_meta_params(model):
            _partition_on_build(model, config)
        return config

    def _resolved_config(self, prac_config: Optional[Any], opt: OptimizerSpec) -> Dict[str, Any]:
        cfg = copy.deepcopy(self.ds_config)
        cfg.pop("prac", None)  # applied in setup() from prac_config, so the section cannot apply it a second way
        _fill(cfg, "gradient_accumulation_steps", opt.grad_accum, "--grad-accum / train.grad_accum")
        if cfg.get("train_batch_size", "auto") == "auto":
            cfg.pop("train_batch_size", None)  # DeepSpeed derives it: micro x accumulation x world
        if self.micro_batch_size is not None:
            _fill(cfg, "train_micro_batch_size_per_gpu", self.micro_batch_size,
                  "--micro-batch-size / train.micro_batch_size")
        elif cfg.get("train_micro_batch_size_per_gpu", "auto") == "auto":
            if "train_batch_size" in cfg:
                cfg.pop("train_micro_batch_size_per_gpu", None)  # derived from train_batch_size
            else:
                # Only DeepSpeed's own dataloader and throughput log read it; prac-train batches its data.
                cfg["train_micro_batch_size_per_gpu"] = 1
        if "train_batch_size" in cfg and "train_micro_batch_size_per_gpu" in cfg:
            expected = cfg["train_micro_batch_size_per_gpu"] * opt.grad_accum * self.world_size
            if cfg["train_batch_size"] != expected:
                raise ConfigError(f"DeepSpeed config train_batch_size={cfg['train_batch_size']!r} != micro-batch "
                                  f"{cfg['train_micro_batch_size_per_gpu']} x accumulation {opt.grad_accum} x "
                                  f"{self.world_size} ranks = {expected}; set it to \"auto\"")
        _fill(cfg, "gradient_clipping", float(opt.grad_clip), "optim.grad_clip")
        for key in ("bf16", "fp16"):
            section = cfg.get(key)
            if isinstance(section, dict) and section.get("enabled") == "auto":
                section["enabled"] = key == "bf16" and self.device.type == "cuda"
        optimizer = cfg.get("optimizer")
        if isinstance(optimizer, dict):
            params = optimizer.setdefault("params", {})
            for key, value in (("lr", opt.lr), ("betas", list(opt.betas)), ("eps", opt.eps),
                               ("weight_decay", opt.weight_decay)):
                if params.get(key, "auto") == "auto":
                    params[key] = value
        _reject_auto_left(cfg, self.ds_config_source)
        return cfg

    # ---- training -----------------------------------------------------------------------------
    def forward_context(self):
        """No autocast: the engine casts as the JSON's bf16 / fp16 sections say."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        # engine.backward divides by gradient_accumulation_steps; engine.step() after every
        # micro-batch advances DeepSpeed's micro-step counter, and only the boundary one updates.
        self.model.backward(loss)
        if not self.model.is_gradient_accumulation_boundary():
            self.model.step()

    def step(self) -> Dict[str, float]:
        if not self.model.is_gradient_accumulation_boundary():
            raise RuntimeError("DeepSpeedBackend.step() called before the last micro-batch of the window")
        lr = self.model.get_lr()[0]
        self.model.step()  # optimizer + LR schedule; the PRAC schedule advances inside (engine wiring)
        norm = self.model.get_global_grad_norm()
        return {"lr": float(lr), "grad_norm": float(norm) if norm is not None else float("nan")}

    # ---- checkpoints ------------------------------------------------------------------------
    def save(self, path: Path, extra: Dict[str, Any]) -> None:
        self.model.save_checkpoint(str(path), tag=_TAG, client_state={"prac_train_extra": extra})

    def load(self, path: Path) -> Dict[str, Any]:
        from prac_dist.checkpoint import CorruptCheckpoint, has_prac_state

        has_prac = has_prac_state(Path(path) / _TAG)
        if has_prac != self.prac:
            raise ConfigError(f"--resume: {path} was written {'with' if has_prac else 'without'} PRAC but this run "
                              f"is {'with' if self.prac else 'without'} it")
        load_path, client_state = self.model.load_checkpoint(str(path), tag=_TAG)
        if load_path is None:
            raise CorruptCheckpoint(f"{path}/{_TAG}: no DeepSpeed checkpoint (the checkpoint is incomplete)")
        return client_state["prac_train_extra"]

    def close(self) -> None:
        if self._owns_process_group:
            close_distributed()
            self._owns_process_group = False


def _zero_stage(cfg: Dict[str, Any]) -> int:
    stage = cfg.get("zero_optimization", {}).get("stage", 0)
    return stage if isinstance(stage, int) else -1


def _partition_on_build(model: nn.Module, config: Dict[str, Any]) -> None:
    """ZeRO-3: partition every meta parameter (deepspeed.zero.Init with the run's config) one at a time and
    write its initial values into this rank's partition only (prac_dist.train.meta_init.materialize_each):
    a rank holds its partitions, with the weights of the one-process build."""
    import deepspeed
    import torch.distributed as dist

    zero = config.get("zero_optimization", {})
    # NVMe-offloaded partitions are swapped out, and hpZ's secondary partitions copied, inside zero.Init:
    # both read the whole tensor then, so it must hold its values first.
    whole_first = (zero.get("offload_param", {}) or {}).get("device") == "nvme" or \
        int(zero.get("zero_hpz_partition_size", 1) or 1) > 1

    def partition(param: nn.Parameter, fill) -> None:
        if whole_first:
            fill(param.data.view(-1), 0)
        holder = nn.Module()
        holder.register_parameter("p", param)
        deepspeed.zero.Init(module=holder, config_dict_or_path=config)
        if not whole_first:
            part = param.ds_tensor
            fill(part.data.view(-1), part.ds_numel * dist.get_rank(group=param.ds_process_group))
        _return_freed_memory()

    meta_init.materialize_each(model, torch.device("cpu"), partition)


def _return_freed_memory() -> None:
    """Give the whole parameter zero.Init just freed back to the OS (glibc's malloc_trim).

    zero.Init broadcasts each whole parameter from rank 0, so the other ranks write (touch) all of it before
    keeping their partition. glibc serves tensors up to its dynamic mmap threshold (<= 32 MB: q/k/v/o of
    llama_1b) from the heap, and a freed one between two kept partitions stays resident: without the trim a
    rank's memory grows with every parameter partitioned (benchmarks/memory/init_memory.py --deepspeed measures it).
    """
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.lru_cache(maxsize=1)
def _libc():
    import ctypes
    import ctypes.util

    try:  # glibc only (musl and macOS have no malloc_trim: their freed memory is theirs to keep)
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def _fill(cfg: Dict[str, Any], key: str, value: Any, source: str) -> None:
    current = cfg.get(key, "auto")
    if current == "auto":
        cfg[key] = value
    elif current != value:
        raise ConfigError(f"DeepSpeed config {key}={current!r} contradicts {source}={value!r}; "
                          f"set one of them, or \"{key}\": \"auto\" to take prac-train's")


def _reject_auto_left(cfg: Any, source: str, where: str = "") -> None:
    """An "auto" the backend cannot resolve would reach DeepSpeed, which fails far from the cause."""
    if isinstance(cfg, dict):
        for key, value in cfg.items():
            _reject_auto_left(value, source, f"{where}.{key}" if where else key)
    elif cfg == "auto":
        raise ConfigError(f"--deepspeed {source}: {where}='auto' cannot be resolved by prac-train; give a value")
