"""torchtitan: PRAC as a model converter, switched on from the job config like its Float8/MX converters.

    from prac_dist import PRACConfig
    from prac_dist.integrations.torchtitan import PRACConverter, attach_prac

    spec = torchtitan.models.llama3.model_registry(
        "debugmodel", converters=[PRACConverter.Config(prac=PRACConfig(principal_ratio=0.3))])
    model = spec.model.build()                    # PRAC applied as the model is built
    model = spec.parallelize_fn(model, ...)       # torchtitan's AC, per-block compile, fully_shard
    attach_prac(model, optimizers, checkpointer)  # schedule per optimizer step; state in its checkpoint

torchtitan converters rewrite the model config tree before anything is built; this one wraps the
root config so that its build() returns the model initialised (init_states) with apply_prac applied
(structural discovery: one probe forward on tokens, positions and the attention masks its blocks
need), before torchtitan's parallelize function sees it. The PRAC settings are
a PRACConfig field of the converter's config, so they sit in torchtitan's own job config.

Discovery needs real weights: the model must be built on a real device. torchtitan's Trainer builds
on the meta device, so there the build stops with a ConfigError saying so.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass, field
from typing import Dict

import torch
from torch import nn
from torch.distributed.checkpoint.stateful import Stateful
from torchtitan.protocols.model import ModelConfigConverter

from prac_dist.config import PRACConfig
from prac_dist.distributed import rank_world
from prac_dist.patching import apply_prac, hook_optimizer, load_prac_state_dict, prac_state_dict
from prac_dist.validate import ConfigError

__all__ = ["PRACConverter", "PRACCheckpointState", "attach_prac"]

_WITH_PRAC: Dict[type, type] = {}


class PRACConverter(ModelConfigConverter):
    """Wraps a torchtitan model config so that building it applies PRAC (see the module docstring)."""

    @dataclass(kw_only=True, slots=True)
    class Config(ModelConfigConverter.Config):
        prac: PRACConfig = field(default_factory=PRACConfig)
        """The PRAC settings (prac_dist.PRACConfig), applied to the model as it is built."""

    def __init__(self, config: Config, **kwargs):
        if not isinstance(config.prac, PRACConfig):
            raise ConfigError(f"PRACConverter.Config.prac is a {type(config.prac).__name__}; accepted is a "
                              f"prac_dist.PRACConfig")
        self.config = config

    def convert(self, model_config):
        cls = _with_prac_class(type(model_config))
        values = {f.name: getattr(model_config, f.name) for f in dataclasses.fields(model_config) if f.init}
        return cls(**values, prac=self.config.prac)


def _with_prac_class(base: type) -> type:
    """A subclass of the model's config class whose build() applies PRAC (one per class, like LoRA's)."""
    if base in _WITH_PRAC:
        return _WITH_PRAC[base]
    if "prac" in getattr(base, "__dataclass_fields__", {}):
        raise ConfigError(f"PRACConverter: {base.__qualname__} already carries PRAC; list PRACConverter once "
                          f"in converters")

    @dataclass(kw_only=True, slots=True)
    class WithPRAC(base):
        prac: PRACConfig = field(default_factory=PRACConfig)

        def build(self, **kwargs):
            model = base.build(self, **kwargs)
            _apply(model, self.prac)
            return model

    WithPRAC.__name__ = WithPRAC.__qualname__ = f"PRAC{base.__name__}"
    _WITH_PRAC[base] = WithPRAC
    return WithPRAC


def _apply(model: nn.Module, prac: PRACConfig) -> None:
    param = next(iter(model.parameters()))
    if param.device.type == "meta":
        raise ConfigError("PRACConverter: the model was built on the meta device (torchtitan's Trainer does "
                          "this), and PRAC's structural discovery runs one forward on real weights; build "
                          "the converted config on a real device (cpu/cuda) and initialise it first, or "
                          "leave PRACConverter out of converters")
    init = getattr(model, "init_states", None)
    if callable(init):  # torchtitan models build with unset weights: the probe must see real numbers
        init(buffer_device=None)
    apply_prac(model, prac, example_inputs=_probe(model, param.device))


def _probe(model: nn.Module, device: torch.device) -> dict:
    """forward(tokens, positions, attention_masks) of one 2 x 16 batch: FlexAttention and varlen blocks
    need the masks torchtitan's dataloader path makes (get_attention_masks); SDPA blocks take none."""
    emb = next(m for m in model.modules() if isinstance(m, nn.Embedding))
    tokens = torch.randint(0, emb.num_embeddings, (2, 16), generator=torch.Generator().manual_seed(0)).to(device)
    positions = torch.arange(16, device=device).expand(2, 16)
    get_masks = getattr(model, "get_attention_masks", None)
    try:
        masks = get_masks(positions) if callable(get_masks) else None
    except TypeError:  # "Only VarlenAttention and FlexAttention support attention masks"
        masks = None
    return {"tokens": tokens, "positions": positions, "attention_masks": masks}


class PRACCheckpointState(Stateful):
    """This rank's PRAC state (bases, counters) as a torchtitan checkpoint entry.

    DCP keeps one copy of an entry every rank writes under the same key, and plans a load from the
    entries' types before any is read (a fresh model has no bases yet); each rank's bases come from its
    own data. So the entry is keyed by rank and holds one serialised blob.
    """

    def __init__(self, model: nn.Module):
        self.model = model

    def state_dict(self) -> dict:
        buffer = io.BytesIO()
        torch.save(prac_state_dict(self.model), buffer)
        return {f"rank{rank_world()[0]}": buffer.getvalue()}

    def load_state_dict(self, state_dict: dict) -> None:
        key = f"rank{rank_world()[0]}"
        if key not in state_dict:
            raise ValueError(f"PRAC checkpoint state: no entry {key!r} (found {sorted(state_dict)}); the run was "
                             f"saved with another number of ranks")
        sd = torch.load(io.BytesIO(state_dict[key]), map_location="cpu", weights_only=False)
        load_prac_state_dict(self.model, sd)


def attach_prac(model: nn.Module, optimizers, checkpointer=None, key: str = "prac"):
    """Advance the PRAC schedule once per `optimizers.step()` (torchtitan's OptimizersContainer or any
    torch optimizer) and, with a checkpointer, save and load this rank's PRAC state under `key`."""
    handle = hook_optimizer(optimizers, model)
    if checkpointer is not None:
        states = getattr(checkpointer, "states", None)
        if not isinstance(states, dict):
            raise ValueError(f"attach_prac: checkpointer is a {type(checkpointer).__name__} without a states dict; "
                             f"accepted is torchtitan's CheckpointManager with checkpoint.enable=True")
        if key in states:
            raise ValueError(f"attach_prac: the checkpointer already holds a state named {key!r}; pass another key")
        states[key] = PRACCheckpointState(model)
    return handle
