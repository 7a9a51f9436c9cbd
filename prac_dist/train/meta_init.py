"""Build on the meta device, materialise only what this rank holds, with weights that do not depend on sharding.

Why: building the full float32 model on every rank and then sharding it needs the whole model in host
memory per rank (llama_7b: 28 GB) before the first step. Here the parameters are born on the meta
device (buffers, e.g. RoPE's inv_freq, are real: a few KB), FSDP2 shards the meta model, and
`materialize` allocates and initialises each rank's shard only.

Why the weights agree across sharding: Hugging Face's `_init_weights` draws module by module from the
global RNG, so a value depends on everything drawn before it, and a shard cannot draw its rows alone.
`init_parameters` instead draws every parameter in blocks of rows, each block from its own generator
seeded by (seed, parameter name, block index). A rank draws only the blocks its rows touch, so the
single-process build (one rank holding everything) and any sharding produce the same values bit for bit.
The distributions are HF's for LLaMA (`PreTrainedModel._init_weights`): N(0, initializer_range) for
Linear and Embedding weights (a padding_idx row zero), zeros for biases, ones for norm weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import weakref
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Tuple

import torch
from torch import nn

__all__ = ["params_on_meta", "record_init", "materialize", "materialize_each", "has_meta_params", "init_parameters"]

# A block of rows is drawn from one generator: at least this many elements per block, so seeding costs
# (one SHA-256 and one mt19937 init per block) stay small next to drawing (llama_1b: ~21k blocks).
_BLOCK_ELEMENTS = 1 << 16
# Name segments that wrappers add between build and materialise (activation checkpointing, torch.compile).
_WRAPPER_SEGMENTS = ("_checkpoint_wrapped_module", "_orig_mod")


@dataclass(frozen=True)
class _Rule:
    kind: str            # 'normal' | 'zeros' | 'ones'
    std: float = 0.0
    padding_idx: int = -1  # an Embedding row set to zero after drawing (-1: none)


@dataclass
class _InitSpec:
    seed: int
    rules: Dict[str, _Rule]
    buffers: Dict[str, torch.Tensor]


# fill(flat, start): write the flattened parameter's values from element `start` on into the 1-D `flat`.
Filler = Callable[[torch.Tensor, int], None]

_SPECS: "weakref.WeakKeyDictionary[nn.Module, _InitSpec]" = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def params_on_meta() -> Iterator[None]:
    """Every parameter registered inside is moved to the meta device; buffers stay real.

    Unlike `with torch.device('meta')`, buffers computed in constructors (RoPE inv_freq) keep their
    values, so `materialize` restores them instead of needing each family's formula.
    """
    original = nn.Module.register_parameter

    def register(module, name, param):
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def record_init(model: nn.Module, seed: int, std: float) -> None:
    """Remember how to initialise `model` (built under `params_on_meta`), by its parameter names now.

    Call before PRAC or FSDP touch the model: the names then are the plain model's, and so the seeds.
    """
    rules: Dict[str, _Rule] = {}
    for module_name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{pname}" if module_name else pname
            rules[full] = _rule_for(module, pname, full, std)
    buffers = {_canonical(n): b.detach().clone() for n, b in model.named_buffers()}
    meta_buffers = [n for n, b in buffers.items() if b.device.type == "meta"]
    if meta_buffers:
        raise ValueError(f"record_init: buffers {meta_buffers[:3]} are on the meta device; build the model under "
                         f"params_on_meta(), not torch.device('meta'), so buffers keep their values")
    _SPECS[model] = _InitSpec(seed=seed, rules=rules, buffers=buffers)


def has_meta_params(model: nn.Module) -> bool:
    return any(p.device.type == "meta" for p in model.parameters())


def materialize(model: nn.Module, device: torch.device) -> None:
    """Allocate `model`'s parameters (each rank's shard, when sharded) on `device` and initialise them."""
    spec = _spec(model)
    tied = _tied_groups(model)
    model.to_empty(device=device)
    for module_name, module in model.named_modules():
        for bname, buf in module.named_buffers(recurse=False):
            full = _canonical(f"{module_name}.{bname}" if module_name else bname)
            with torch.no_grad():
                buf.copy_(spec.buffers[full])
    _retie(model, tied)
    init_parameters(model, spec.seed, spec.rules)


def materialize_each(model: nn.Module, device: torch.device, partition: Callable[[nn.Parameter, Filler], None]) -> None:
    """Allocate, partition and initialise one whole parameter at a time (DeepSpeed ZeRO-3).

    `partition(param, fill)` partitions `param` (deepspeed.zero.Init(module=...)) and calls `fill(flat, start)`
    on what the rank keeps: `flat` (1-D) receives the flattened parameter's values from element `start` on
    (past its end: zeros, ZeRO's padding). Only the partition is drawn and written: a rank draws 1/W of the
    model, and the whole tensor is written only by what `partition` does with it (zero.Init broadcasts it
    from rank 0, which the other ranks receive and free). Measured for llama_1b on 2 ranks
    (benchmarks/results/init_memory.json): 0.555 x the fp32 model at the worst rank, its partitions (0.5)
    plus one whole embedding (0.05); filling whole tensors first gave 0.687. A `partition` that must copy the whole tensor (NVMe offload, hpZ secondary partitions) calls
    fill(param.data.view(-1), 0) first. Buffers were never on meta (params_on_meta) and stay as built.
    Tied slots get the same new Parameter. Values equal `materialize`'s bit for bit: the same (seed, name,
    block) generators, whatever the partition boundaries.
    """
    spec = _spec(model)
    _check_rules(model, spec.rules)
    done: Dict[int, nn.Parameter] = {}
    for module_name, module in model.named_modules():
        for pname, param in list(module._parameters.items()):
            if param is None:
                continue
            if id(param) not in done:
                name = _canonical(f"{module_name}.{pname}" if module_name else pname)
                real = nn.Parameter(torch.empty(param.shape, dtype=param.dtype, device=device),
                                    requires_grad=param.requires_grad)
                done[id(param)] = real
                setattr(module, pname, real)
                rule, shape = spec.rules[name], tuple(param.shape)
                partition(real, lambda flat, start, r=rule, n=name, sh=shape: _fill_flat(flat, r, spec.seed, n, start, sh))
            else:
                setattr(module, pname, done[id(param)])


def _spec(model: nn.Module) -> _InitSpec:
    spec = _SPECS.get(model)
    if spec is None:
        raise ValueError(f"materialize: {type(model).__name__} was not recorded with record_init; "
                         f"build it with prac_dist.train.models.build_model(..., materialize=False)")
    return spec


def _check_rules(model: nn.Module, rules: Dict[str, _Rule]) -> None:
    missing = [n for n, _ in model.named_parameters() if _canonical(n) not in rules]
    if missing:
        raise ValueError(f"init_parameters: no init rule for parameters {missing[:3]}; the model changed "
                         f"between record_init and materialize")


def init_parameters(model: nn.Module, seed: int, rules: Dict[str, _Rule]) -> None:
    """Write every parameter (plain tensor or DTensor shard) from the (seed, name, block) generators."""
    _check_rules(model, rules)
    named = list(model.named_parameters())
    with torch.no_grad():
        for name, param in named:
            name = _canonical(name)
            local, row_start = _local_rows(param)
            _fill(local, rules[name], seed, name, row_start, tuple(param.shape))


def _rule_for(module: nn.Module, pname: str, full: str, std: float) -> _Rule:
    if pname == "bias":
        return _Rule("zeros")
    if isinstance(module, (nn.Linear, nn.Embedding)) and pname == "weight":
        pad = module.padding_idx if isinstance(module, nn.Embedding) and module.padding_idx is not None else -1
        return _Rule("normal", std=std, padding_idx=pad)
    cls = type(module).__name__
    if pname == "weight" and ("RMSNorm" in cls or "LayerNorm" in cls):
        return _Rule("ones")
    raise ValueError(f"meta init: no rule for parameter {full!r} of {cls}; accepted are Linear/Embedding weights, "
                     f"biases and RMSNorm/LayerNorm weights (the LLaMA presets' parameters)")


def _local_rows(param: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """This rank's tensor of `param` and the global index of its first row (dim-0 sharding only)."""
    from torch.distributed.tensor import DTensor

    if not isinstance(param, DTensor):
        return param, 0
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    local = param.to_local()
    if tuple(local.shape) != tuple(shape) or any(offset[1:]) or tuple(shape[1:]) != tuple(param.shape[1:]):
        raise ValueError(f"meta init: shard of shape {tuple(local.shape)} at offset {tuple(offset)} of "
                         f"{tuple(param.shape)} with {param.placements}: accepted is sharding along dim 0 only")
    return local, int(offset[0]) if len(offset) else 0


def _fill(local: torch.Tensor, rule: _Rule, seed: int, name: str, row_start: int, global_shape) -> None:
    if rule.kind == "zeros":
        local.zero_()
        return
    if rule.kind == "ones":
        local.fill_(1.0)
        return
    rows = local.shape[0] if local.dim() else 1
    if rows == 0:
        return
    block = _rows_per_block(global_shape)
    for b in range(row_start // block, (row_start + rows - 1) // block + 1):
        lo, hi = max(b * block, row_start), min((b + 1) * block, row_start + rows, global_shape[0])
        drawn = _draw_block(rule, seed, name, b, block, global_shape)
        local[lo - row_start:hi - row_start].copy_(drawn[lo - b * block:hi - b * block])


def _rows_per_block(global_shape) -> int:
    row_elems = math.prod(global_shape[1:]) if len(global_shape) > 1 else 1
    return max(1, _BLOCK_ELEMENTS // max(1, row_elems))


def _draw_block(rule: _Rule, seed: int, name: str, b: int, block: int, global_shape) -> torch.Tensor:
    """Rows [b·block, (b+1)·block) of a 'normal' parameter, from the (seed, name, b) generator (padding row zero)."""
    drawn = torch.empty((min(block, global_shape[0] - b * block),) + tuple(global_shape[1:]))
    drawn.normal_(0.0, rule.std, generator=torch.Generator().manual_seed(_block_seed(seed, name, b)))
    if rule.padding_idx >= 0 and b * block <= rule.padding_idx < b * block + drawn.shape[0]:
        drawn[rule.padding_idx - b * block].zero_()
    return drawn


def _fill_flat(flat: torch.Tensor, rule: _Rule, seed: int, name: str, start: int, global_shape) -> None:
    """`flat`[k] = element start + k of the flattened parameter (zero past its end): `_fill`'s values and blocks."""
    numel = math.prod(global_shape)
    count = max(0, min(flat.numel(), numel - start))
    flat[count:].zero_()
    if count == 0 or rule.kind != "normal":
        _fill(flat[:count], rule, seed, name, 0, (count,))  # zeros or ones: no draws
        return
    block = _rows_per_block(global_shape)
    block_elems = block * math.prod(global_shape[1:])
    end = start + count
    for b in range(start // block_elems, (end - 1) // block_elems + 1):
        b_start = b * block_elems
        drawn = _draw_block(rule, seed, name, b, block, global_shape)
        lo, hi = max(start, b_start), min(end, b_start + drawn.numel())
        flat[lo - start:hi - start].copy_(drawn.view(-1)[lo - b_start:hi - b_start])


def _block_seed(seed: int, name: str, block: int) -> int:
    digest = hashlib.sha256(f"{seed}/{name}/{block}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _canonical(name: str) -> str:
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_SEGMENTS)


def _tied_groups(model: nn.Module):
    """(module, attribute) slots that share one Parameter (tied embeddings), to re-tie after to_empty."""
    slots: Dict[int, list] = {}
    for module in model.modules():
        for pname, param in module.named_parameters(recurse=False):
            slots.setdefault(id(param), []).append((module, pname))
    return [group for group in slots.values() if len(group) > 1]


def _retie(model: nn.Module, groups) -> None:
    for (first_module, first_name), *rest in groups:
        param = getattr(first_module, first_name)
        for module, pname in rest:
            if getattr(module, pname) is not param:
                setattr(module, pname, param)
