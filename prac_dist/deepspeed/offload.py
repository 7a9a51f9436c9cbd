"""Compressed activation offload: PRAC's saved Z tensors go to host memory after forward.

Only tensors PRAC marked as compressed activations move (never Parameters, never
the exact tensors other layers save), so the host traffic is (r1 + r2)/n of
offloading the same layers' full inputs. Hooks are active only inside the
model's forward, through `torch.autograd.graph.saved_tensors_hooks`:

    pack   (forward):  Z -> pinned host buffer, copied on a side stream (non_blocking)
    unpack (backward): host -> device on the side stream, and the tensor packed just
                       before this one is prefetched, so the next layer's copy overlaps
                       this layer's backward.

On CPU the same path runs with a copy into a separate CPU buffer, which is what
the tests compare gradients through. Layers that share one Z (q/k/v, gate/up)
move it once: packs are de-duplicated by tensor identity within a forward.

Limitation, by construction of saved_tensors_hooks: only the innermost pair of
hooks is active, so inside a non-reentrant checkpointed block (which installs
its own) nothing is offloaded -- those tensors are recomputed anyway.
"""

from __future__ import annotations

import collections
import weakref
from typing import Dict, List, Optional

import torch
from torch import nn

from prac_dist.deepspeed.config import OffloadConfig

__all__ = ["CompressedActivationOffload"]

# How many of the most recently packed device tensors stay referenced until the next
# packs: PRAC's shared compressor keeps only a weak reference to a Z it hands to q/k/v
# (or gate/up), so the Z must outlive the q_proj pack for k_proj and v_proj to reuse it.
# The largest sharing group is 3 consumers of a 1- or 2-tensor stored form (int8 codes + scales).
_KEEP_RECENT = 2


def _is_compressed(t: torch.Tensor) -> bool:
    try:
        from prac_dist.core.storage import is_compressed_activation
    except ImportError:  # pragma: no cover - the core always provides it
        return bool(getattr(t, "_prac_compressed", False))
    return is_compressed_activation(t)


class _Record:
    """One offloaded tensor: its host copy and, during backward, its device copy."""

    __slots__ = ("host", "device", "d2h_event", "h2d_event", "on_device", "prev", "nbytes")

    def __init__(self, host: torch.Tensor, device: torch.device, nbytes: int, prev: Optional["_Record"]):
        self.host = host
        self.device = device
        self.nbytes = nbytes
        self.prev = prev
        self.d2h_event = None
        self.h2d_event = None
        self.on_device: Optional[torch.Tensor] = None


class CompressedActivationOffload:
    """Moves PRAC's compressed activations to host memory between forward and backward.

    attach(model) registers a forward pre-hook and a forward hook on the root module;
    `stats` counts the bytes copied each way since the last `reset_stats()`.
    """

    def __init__(self, config: OffloadConfig):
        if not config.enabled:
            raise ValueError(f"offload.device={config.device!r}: CompressedActivationOffload needs device 'cpu'")
        self.config = config
        self.stats: Dict[str, int] = {}
        self.reset_stats()
        self._handles: List = []
        self._contexts: List = []
        self._seen: Dict[int, tuple] = {}
        self._recent: collections.deque = collections.deque(maxlen=_KEEP_RECENT)
        self._last: Optional[_Record] = None
        self._stream = None

    # ---- wiring -----------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> "CompressedActivationOffload":
        if self._handles:
            raise RuntimeError("CompressedActivationOffload is already attached to a model")
        self._handles = [
            model.register_forward_pre_hook(self._enter),
            # always_call: pop the hooks even when forward raises, or they would leak into the next forward.
            model.register_forward_hook(self._exit, always_call=True),
        ]
        model._prac_offload = self
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def reset_stats(self) -> None:
        self.stats = {"d2h_bytes": 0, "h2d_bytes": 0, "tensors": 0, "skipped_small": 0}

    def _enter(self, module, args) -> None:
        ctx = None
        if torch.is_grad_enabled():  # eval / no_grad forwards save nothing
            ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
            ctx.__enter__()
        self._contexts.append(ctx)

    def _exit(self, module, args, output) -> None:
        if not self._contexts:
            return
        ctx = self._contexts.pop()
        if ctx is not None:
            ctx.__exit__(None, None, None)
        if not self._contexts:
            self._seen.clear()
            self._recent.clear()
            self._last = None

    # ---- hooks --------------------------------------------------------------------------------
    def _pack(self, t: torch.Tensor):
        if isinstance(t, nn.Parameter) or not _is_compressed(t):
            return t
        nbytes = t.numel() * t.element_size()
        if nbytes < self.config.min_bytes:
            self.stats["skipped_small"] += 1
            return t
        seen = self._seen.get(id(t))
        if seen is not None and seen[0]() is t:
            return seen[1]  # q/k/v share one Z: one copy, one record
        record = self._to_host(t, nbytes)
        self._seen[id(t)] = (weakref.ref(t), record)
        self._recent.append(t)
        self.stats["d2h_bytes"] += nbytes
        self.stats["tensors"] += 1
        return record

    def _unpack(self, packed):
        if not isinstance(packed, _Record):
            return packed
        t = self._to_device(packed)
        if packed.device.type == "cuda" and packed.prev is not None:
            # Backward visits layers in reverse: the tensor packed before this one is needed next.
            self._to_device(packed.prev, prefetch=True)
        return t

    # ---- copies -------------------------------------------------------------------------------
    def _side_stream(self, device: torch.device):
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=device)
        return self._stream

    def _to_host(self, t: torch.Tensor, nbytes: int) -> _Record:
        dev = t.device
        if dev.type != "cuda":
            # CPU (and other devices without streams here): a synchronous copy into a separate buffer.
            host = torch.empty(t.shape, dtype=t.dtype, device="cpu")
            host.copy_(t)
            record = _Record(host, dev, nbytes, self._last)
        else:
            host = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=self.config.pin_memory)
            stream = self._side_stream(dev)
            stream.wait_stream(torch.cuda.current_stream(dev))  # Z must be computed before it is read
            with torch.cuda.stream(stream):
                host.copy_(t, non_blocking=True)
            # The allocator must not hand t's memory to anyone until the side-stream copy has read it.
            t.record_stream(stream)
            record = _Record(host, dev, nbytes, self._last)
            record.d2h_event = torch.cuda.Event()
            record.d2h_event.record(stream)
        self._last = record
        return record

    def _to_device(self, record: _Record, prefetch: bool = False) -> torch.Tensor:
        if record.on_device is None:
            self.stats["h2d_bytes"] += record.nbytes
            if record.device.type != "cuda":
                record.on_device = record.host.to(record.device)
            else:
                stream = self._side_stream(record.device)
                with torch.cuda.stream(stream):  # ordered after this record's d2h copy (same stream)
                    record.on_device = record.host.to(record.device, non_blocking=True)
                record.h2d_event = torch.cuda.Event()
                record.h2d_event.record(stream)
        t = record.on_device
        if prefetch:
            return t
        if record.h2d_event is not None:
            current = torch.cuda.current_stream(record.device)
            current.wait_event(record.h2d_event)
            # Allocated on the side stream, used on the compute stream.
            t.record_stream(current)
        # Shared records (q/k/v) are unpacked once per consumer; the device copy is kept for the
        # next consumer and dropped once the autograd graph releases the record.
        return t
