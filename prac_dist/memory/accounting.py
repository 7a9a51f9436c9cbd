"""Count the bytes autograd keeps for backward, with a saved-tensor hook.

Every tensor a Function saves (our own save_for_backward, and the C++ saved variables of
built-in ops, SDPA included) passes through the pack hook. We count each *storage* once
(views and shared Z tensors are one allocation), skip the model's parameters and buffers
(they live anyway), and attribute the bytes to the innermost module running at the time.
Tensors hidden as ctx attributes escape such hooks, which is why prac_dist's Functions use
save_for_backward for everything batch-sized.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Optional

import torch
from torch import nn

__all__ = ["measure_saved_bytes", "SavedBytesReport"]


@dataclass
class SavedBytesReport:
    total_bytes: int = 0
    by_module_type: Dict[str, int] = field(default_factory=dict)
    by_module_name: Dict[str, int] = field(default_factory=dict)
    """The same bytes by the qualified name of the innermost running module ('' for the root)."""
    tensors: int = 0
    output: Any = None

    def table(self, title: str = "saved for backward") -> str:
        width = max([len(k) for k in self.by_module_type] + [12])
        lines = [f"{title:<{width}}  {'MiB':>10}  {'share':>6}"]
        for name, nbytes in sorted(self.by_module_type.items(), key=lambda kv: -kv[1]):
            share = nbytes / self.total_bytes if self.total_bytes else 0.0
            lines.append(f"{name:<{width}}  {nbytes / 2**20:>10.2f}  {share:>6.1%}")
        lines.append(f"{'total':<{width}}  {self.total_bytes / 2**20:>10.2f}  {1:>6.0%}")
        return "\n".join(lines)


def _storage_key(t: torch.Tensor):
    storage = t.untyped_storage()
    return (t.device.type, t.device.index, storage.data_ptr()), storage.nbytes()


def _resident_storages(model: nn.Module) -> set:
    """Storages of parameters, buffers and PRAC's bases (they live anyway), local shards included.

    The PRAC linear saves its float32 basis [Q1 | Q2] for backward: that is the compressor's own cached
    tensor (n x r per group, independent of the batch), not a new activation.
    """
    keys = _basis_storages(model)
    for t in list(model.parameters()) + list(model.buffers()):
        local = t.to_local() if hasattr(t, "to_local") else t  # FSDP2 DTensor -> this rank's shard
        try:
            keys.add(_storage_key(local)[0])
        except RuntimeError:  # resharded-out storage (FSDP2 / ZeRO-3): nothing to skip
            continue
    return keys


def _basis_storages(model: nn.Module) -> set:
    """Storages of PRAC's current bases (read by name: memory/ sits below patching/)."""
    state = model.__dict__.get("_prac_state")
    bases = [t for c in (state.compressors.values() if state is not None else ())
             for t in (getattr(c, "_back", None), c.q1, c.q2) if t is not None]
    return {_storage_key(t)[0] for t in bases}


def measure_saved_bytes(run: Callable[[], Any], model: nn.Module,
                        scope: Optional[Iterable[nn.Module]] = None) -> SavedBytesReport:
    """Run `run()` (a forward, plus the loss if it should count) and count what it saves for backward.

    scope: count only tensors saved while one of these modules (or its descendants) runs,
    e.g. the decoder layers. The output of `run()` is kept on the report so the caller can
    run backward afterwards.
    """
    skip = _resident_storages(model)
    in_scope_ids = None if scope is None else {id(m) for m in scope}
    stack: list = []
    seen: set = set()
    report = SavedBytesReport()
    by_type: Dict[str, int] = defaultdict(int)
    by_name: Dict[str, int] = defaultdict(int)
    names = {id(m): name for name, m in model.named_modules()}

    def pre(module, _args):
        stack.append(module)

    def post(module, _args, _out):
        if stack and stack[-1] is module:
            stack.pop()

    def counted() -> bool:
        return in_scope_ids is None or any(id(m) in in_scope_ids for m in stack)

    def pack(t: torch.Tensor):
        if isinstance(t, nn.Parameter) or not counted():
            return t
        try:
            key, nbytes = _storage_key(t)
        except RuntimeError:  # a storage freed by FSDP2/ZeRO-3 resharding holds no bytes
            return t
        if key in skip or key in seen or key in _basis_storages(model):  # incl. a basis refreshed in this forward
            return t
        seen.add(key)
        owner = type(stack[-1]).__name__ if stack else "(outside modules)"
        by_type[owner] += nbytes
        by_name[names.get(id(stack[-1]), "(unnamed)") if stack else "(outside modules)"] += nbytes
        report.total_bytes += nbytes
        report.tensors += 1
        return t

    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post, always_call=True))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            report.output = run()
    finally:
        for h in handles:
            h.remove()
    report.by_module_type = dict(by_type)
    report.by_module_name = dict(by_name)
    return report
