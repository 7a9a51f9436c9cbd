"""apply_prac / remove_prac / step and the PRAC state of a model."""

from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from prac_dist.config import PRACConfig
from prac_dist.validate import ConfigError  # settings that do not fit the model: prac-train exits 2
from prac_dist.core.cost import linear_storage_mode
from prac_dist.core.subspace import Compressor, allocate_budgets
from prac_dist.distributed import rank_world
from prac_dist.ops.gelu import GELU_APPROXIMATIONS
from prac_dist.patching.modules import (PRACGELU, PRACLayerNorm, PRACLinear, PRACRMSNorm, PRACSwiGLUMLP,
                                        is_conv1d, is_linear, linear_shape)
from prac_dist.models.registry import ARCHITECTURES, Architecture
from prac_dist.patching.lora import UnloadGuard
from prac_dist.patching.watch import watch_forwards
from prac_dist.patching.wrappers import base_layer, is_peft_wrapper, keep_peft_layers, swap_site, unwrap, unwrap_chain
from prac_dist.patching.discover import Discovery, Site, discover, group_name, replacement

__all__ = ["apply_prac", "remove_prac", "step", "hook_optimizer", "prac_state_dict", "load_prac_state_dict",
           "prac_stats", "nonfinite_refreshes", "is_prac_model", "get_prac_state", "PRACState"]

_STATE_ATTR = "_prac_state"


@dataclass
class PRACState:
    config: PRACConfig
    compressors: Dict[str, Compressor] = field(default_factory=dict)
    swaps: List[Tuple[nn.Module, str, nn.Module]] = field(default_factory=list)
    step: int = 0
    fused_loss: bool = False
    handles: list = field(default_factory=list)
    """Hooks and instance-attribute patches remove_prac takes off (each has .remove())."""
    forwards: int = 0
    """Training forwards counted while step() was never called (see patching/watch.py)."""
    warned_no_step: bool = False
    reported: set = field(default_factory=set)
    discovery: Optional[Discovery] = None
    """For a model outside the registry: what structural discovery found (groups, sites, left alone)."""

    def global_bases(self) -> Dict[str, Compressor]:
        """The bases whose r1 + r2 adaptive_rank='global' moves (the linear layers')."""
        return {k: c for k, c in self.compressors.items() if c.adaptive == "global"}


def _is_linear(m: nn.Module) -> bool:
    return is_linear(base_layer(m))  # a PEFT LoRA layer is the linear it wraps


def _width(weight: torch.Tensor) -> int:
    return int(getattr(weight, "ds_shape", weight.shape)[-1])


def _new_compressor(cfg: PRACConfig, name: str, n: int, nonlinear: bool, m: Optional[int] = None) -> Compressor:
    """m: total output width of a linear group (what linear_storage='auto' weighs the projection against)."""
    if not nonlinear and m is None:  # linear_storage='auto' weighs the projection against m: never guess it
        raise TypeError(f"_new_compressor({name!r}): a linear group needs its total output width m")
    r1, r2 = cfg.ranks(n, nonlinear)
    storage = cfg.nonlinear_storage if nonlinear else linear_storage_mode(cfg.linear_storage, n, m, r1 + r2)
    if storage == "int8":
        return Compressor(name, n, r1, r2, seed=cfg.seed, per_rank_random=cfg.per_rank_random, kernel=cfg.kernel,
                          storage="int8")
    if r1 + r2 == 0:
        prefix = "nonlinear_" if nonlinear else ""
        raise ConfigError(
            f"{name}: width n={n} is too small for {prefix}principal_ratio + {prefix}random_ratio = "
            f"{getattr(cfg, prefix + 'principal_ratio') + getattr(cfg, prefix + 'random_ratio'):g} "
            f"(r1 = r2 = 0); accepted is a ratio sum of at least {1.0 / n:.3g} for this layer, "
            f"or leave it out of target_modules"
        )
    if nonlinear:  # see PRACConfig.nonlinear_principal_update_interval for why these differ
        solver, t1, adaptive = cfg.nonlinear_principal_solver, cfg.nonlinear_principal_update_interval, "off"
        schedule = cfg.nonlinear_principal_schedule
    else:
        solver, t1, adaptive = cfg.principal_solver, cfg.principal_update_interval, cfg.adaptive_rank
        schedule = cfg.principal_schedule
    return Compressor(name, n, r1, r2, seed=cfg.seed, per_rank_random=cfg.per_rank_random,
                      storage_bits=cfg.storage_bits, solver=solver, kernel=cfg.kernel, adaptive=adaptive,
                      adaptive_energy=cfg.adaptive_energy, t1=t1, t2=cfg.random_update_interval, schedule=schedule,
                      drift=cfg.principal_drift)


def _swap(state: PRACState, parent: nn.Module, attr: str, new: nn.Module) -> None:
    # Recorded under the outer name: a PEFT layer may wrap the PRAC module later (patching/wrappers.py).
    site, name = swap_site(parent, attr)
    state.swaps.append((parent, attr, getattr(site, name)))
    setattr(site, name, new)


def _linear_groups(model: nn.Module, arch: Optional[Architecture], targets: Optional[set]):
    """Yield (parent_name, parent, member names) for each group of sibling linears to share a basis."""
    table = arch.linear_groups if arch is not None else ()
    for pname, parent in model.named_modules():
        children = dict(parent.named_children())
        grouped = set()
        for group in table:
            members = tuple(n for n in group if n in children and (targets is None or n in targets))
            if members and all(_is_linear(children[n]) for n in members):
                grouped.update(members)
                yield pname, parent, members
        for cname in children:
            if targets is not None and cname in targets and cname not in grouped:
                yield pname, parent, (cname,)


def _check_targets(model: nn.Module, targets: set) -> None:
    found = {}
    for name, module in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        if last in targets:
            found.setdefault(last, module)
    missing = sorted(targets - set(found))
    if missing:
        raise ConfigError(f"PRACConfig.target_modules: {missing} match no module of this model; "
                          f"accepted are names of its nn.Linear/Conv1D modules")
    for last, module in found.items():
        if not _is_linear(module):
            raise ConfigError(f"PRACConfig.target_modules: {last!r} is a {type(module).__name__}, which PRAC "
                              f"cannot compress; accepted are nn.Linear and transformers Conv1D modules")


def _attention_output_names(model: nn.Module, arch: Optional[Architecture], targets: Optional[set]):
    """Attention-output linears to leave exact (see Architecture.attention_output)."""
    if arch is None:
        return ()
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if impl == "eager":  # eager attention keeps [B, H, S, hd] tensors: the reshape copies, so compress
        return ()
    return tuple(s for s in arch.attention_output if targets is None or s.rsplit(".", 1)[-1] not in targets)


def _architecture(model: nn.Module) -> Optional[Architecture]:
    return ARCHITECTURES.get(getattr(getattr(model, "config", None), "model_type", None))


def apply_prac(model: nn.Module, config: Optional[PRACConfig] = None, *, example_inputs=None) -> nn.Module:
    """Swap the model's linear (and norm/MLP) modules for PRAC ones, in place; same Parameters.

    `model` may be a PEFT model (before or after get_peft_model both work) or an engine-wrapped one:
    the innermost model is patched and returned inside its wrappers.

    A model outside the registry is patched by structural discovery, from one forward on
    `example_inputs` (a tensor, a tuple of positional or a dict of keyword arguments of its forward),
    or, without them, on random token ids placed as its forward's signature asks (patching/discover.py).
    With `PRACConfig.target_modules` and no `example_inputs` nothing is run: each named linear gets a
    basis of its own (with `example_inputs` too, linears that read one tensor share one).
    """
    wrapped, model = model, unwrap(model)
    cfg = config or PRACConfig()
    if not isinstance(cfg, PRACConfig):
        raise ValueError(f"apply_prac: config must be a PRACConfig, got {type(cfg).__name__}")
    if is_prac_model(model):
        raise ValueError("apply_prac: PRAC is already applied to this model; call remove_prac first")
    arch = _architecture(model)
    targets = set(cfg.target_modules) if cfg.target_modules is not None else None
    if targets is not None:
        _check_targets(model, targets)
    state = PRACState(config=cfg)
    if arch is None and (targets is None or example_inputs is not None):  # outside the registry: one forward
        _apply_discovered(model, cfg, state, targets, example_inputs)
        return _finish(wrapped, model, cfg, state)
    transposed = bool(arch and arch.transposed)  # arch is None only for named targets of a non-LM model
    exact = _attention_output_names(model, arch, targets)
    for pname, parent, members in list(_linear_groups(model, arch, targets)):
        if any(f"{pname}.{m}".endswith(suffix) for m in members for suffix in exact):
            continue
        first = getattr(parent, members[0])
        n = linear_shape(first, transposed or is_conv1d(first))[0]
        m = sum(linear_shape(getattr(parent, k), transposed or is_conv1d(getattr(parent, k)))[1] for k in members)
        gname = f"{pname}.{'+'.join(members)}" if pname else "+".join(members)
        comp = _new_compressor(cfg, gname, n, nonlinear=False, m=m)
        state.compressors[gname] = comp
        for member in members:
            module = base_layer(getattr(parent, member))
            _swap(state, parent, member, PRACLinear(module, comp, transposed=is_conv1d(module)))
    if arch is not None:
        _patch_nonlinear(model, arch, cfg, state)
    return _finish(wrapped, model, cfg, state)


def _finish(wrapped: nn.Module, model: nn.Module, cfg: PRACConfig, state: PRACState) -> nn.Module:
    model.__dict__[_STATE_ATTR] = state
    rank = rank_world()[0]  # Q2 draws and int8 roundings are seeded per data-parallel rank
    for comp in state.compressors.values():
        comp.set_rank(rank)
    if cfg.fused_loss_backward is not None:
        state.fused_loss = _install_fused_loss(model, cfg.fused_loss_backward)
    watch_forwards(state, model)
    _guard_unload(list(unwrap_chain(wrapped))[:-1], state)
    return wrapped


def _guard_unload(outer, state: PRACState) -> None:
    """PEFT's merge_and_unload()/unload() on these wrappers take PRAC off first (patching/lora.py)."""
    for module in outer:
        if is_peft_wrapper(module) and hasattr(type(module), "merge_and_unload"):  # the tuner, not PeftModel
            UnloadGuard.install(module, state.swaps, functools.partial(remove_prac, module), state.handles)


def _apply_discovered(model: nn.Module, cfg: PRACConfig, state: PRACState, targets: Optional[set],
                      example_inputs) -> None:
    """Swap what prac_dist.patching.discover found; say once what stays exact and what was left alone."""
    found = state.discovery = discover(model, cfg.kernel, example_inputs)
    # Without compression (or next to a copy another module keeps) a lean op is worth it only if leaner.
    sites = [s for s in found.sites
             if (cfg.compress_nonlinear and s.kept_by is None) or s.saved_after < s.saved_before]
    # A GELU MLP's down projection stores no input at all once the site is installed: nothing to compress.
    stores_nothing = {f"{s.name}.{s.option('names')[2]}" for s in sites if s.kind == "gelu_mlp"}
    kept = [f"{s.name} (its input is saved by {s.kept_by} too)" for s in found.sites
            if cfg.compress_nonlinear and s.kept_by is not None]
    for group in found.groups:
        members = [m for m in group.members if (targets is None or m.rsplit(".", 1)[-1] in targets)
                   and m not in stores_nothing]
        if not members:
            continue
        name = group.name if len(members) == len(group.members) else group_name(members)
        if group.kept_by is not None and targets is None:
            kept.append(f"{name} (its input is saved by {group.kept_by} anyway)")
        else:
            _swap_group(model, name, members, cfg, state)
    for site in sites:
        _swap_site(model, site, cfg, state)
    if kept:
        warnings.warn(f"apply_prac: left exact, because compressing would store more than not compressing: "
                      f"{_collapse(kept)}", stacklevel=3)
    if found.left_alone:
        warnings.warn(f"apply_prac: left unpatched, because no lean op gives their outputs and gradients: "
                      f"{_collapse(f'{k}: {v}' for k, v in found.left_alone.items())}", stacklevel=3)


def _swap_group(model: nn.Module, name: str, members, cfg: PRACConfig, state: PRACState) -> None:
    """PRACLinears sharing one compressor for linears (full names) that read one tensor."""
    modules = [model.get_submodule(m) for m in members]
    shapes = [linear_shape(m, is_conv1d(m)) for m in modules]  # (in, out): m = the group's total out width
    comp = state.compressors[name] = _new_compressor(cfg, name, shapes[0][0], nonlinear=False,
                                                     m=sum(out for _, out in shapes))
    for member, module in zip(members, modules):
        parent_name, _, attr = member.rpartition(".")
        _swap(state, model.get_submodule(parent_name), attr, PRACLinear(module, comp, transposed=is_conv1d(module)))


def _swap_site(model: nn.Module, site: Site, cfg: PRACConfig, state: PRACState) -> None:
    """Install a discovered site's replacement (compressing its input under compress_nonlinear)."""
    module = model.get_submodule(site.name)
    parent_name, _, attr = site.name.rpartition(".")

    def comp_for(name: str, n: int) -> Optional[Compressor]:
        if not cfg.compress_nonlinear or site.kept_by is not None:
            return None
        c = state.compressors[name] = _new_compressor(cfg, name, n, nonlinear=True)
        return c

    if site.kind == "gelu_mlp":  # h serves the GELU and the down projection: exact, or one int8 copy
        up, act, _ = site.option("names")
        ffn = linear_shape(getattr(module, up), is_conv1d(getattr(module, up)))[1]
        # A projection of h would bias dW through gelu (and project + project costs what h exactly does).
        comps = (comp_for(f"{site.name}.{act}", ffn) if cfg.nonlinear_storage == "int8" else None,)
    elif site.kind == "swiglu":
        gate, up, _ = site.option("names")
        ffn = linear_shape(getattr(module, gate), is_conv1d(getattr(module, gate)))[1] // (2 if gate == up else 1)
        comps = (comp_for(f"{site.name}.gate_out", ffn), comp_for(f"{site.name}.up_out", ffn))
    else:
        comps = (comp_for(site.name, site.width),)
    _swap(state, model.get_submodule(parent_name), attr, replacement(module, site, comps, cfg.kernel))


def _collapse(names) -> str:
    """'model.layers.{0,1,...}.x' for the same site in every layer: one line however deep the model."""
    by_pattern: Dict[str, List[str]] = {}
    for name in names:
        by_pattern.setdefault(re.sub(r"\.\d+\.", ".*.", name), []).append(name)
    return "; ".join(f"{p} (x{len(n)})" if len(n) > 1 else n[0] for p, n in by_pattern.items())


def _install_fused_loss(model: nn.Module, backward: str) -> bool:
    try:
        from prac_dist.loss import install_fused_loss
    except ImportError:  # pragma: no cover - the loss package ships with prac_dist
        return False
    return bool(install_fused_loss(model, backward=backward))


def _patch_nonlinear(model: nn.Module, arch: Architecture, cfg: PRACConfig, state: PRACState) -> None:
    compress = cfg.compress_nonlinear
    hidden_act = getattr(getattr(model, "config", None), "hidden_act", None)
    activation = getattr(getattr(model, "config", None), "activation_function", None)

    def comp_for(name: str, n: int) -> Optional[Compressor]:
        if not compress:
            return None
        c = _new_compressor(cfg, name, n, nonlinear=True)
        state.compressors[name] = c
        return c

    for pname, parent in list(model.named_modules()):
        for cname, child in list(parent.named_children()):
            name = f"{pname}.{cname}" if pname else cname
            kind = type(child).__name__
            if arch.norm == "rms" and kind.endswith("RMSNorm") and getattr(child, "weight", None) is not None:
                _swap(state, parent, cname, PRACRMSNorm(child, comp_for(name, _width(child.weight)), cfg.kernel))
            elif arch.norm == "layer" and isinstance(child, nn.LayerNorm) and compress:
                _swap(state, parent, cname, PRACLayerNorm(child, comp_for(name, int(child.normalized_shape[-1]))))
            elif (arch.mlp == "swiglu" and hidden_act in ("silu", "swish")
                  and all(hasattr(child, a) for a in ("gate_proj", "up_proj", "down_proj"))):
                ffn = linear_shape(child.gate_proj, False)[1]
                new = PRACSwiGLUMLP(child, comp_for(f"{name}.gate_out", ffn), comp_for(f"{name}.up_out", ffn),
                                    cfg.kernel)
                _swap(state, parent, cname, new)
            elif (arch.activation == cname and activation in GELU_APPROXIMATIONS and hasattr(parent, "c_fc")):
                width = linear_shape(parent.c_fc, True)[1]
                _swap(state, parent, cname, PRACGELU(child, GELU_APPROXIMATIONS[activation], comp_for(name, width)))


def get_prac_state(model: nn.Module) -> Optional[PRACState]:
    """The PRAC state of a model, also through DeepSpeed / DDP / PEFT wrappers.

    A PEFT model wrapped around an already patched one (apply_prac before get_peft_model) gets its
    merge_and_unload()/unload() guard here, at the first prac_dist call that sees it.
    """
    outer = []
    for module in unwrap_chain(model):
        state = module.__dict__.get(_STATE_ATTR)
        if state is not None:
            _guard_unload(outer, state)
            return state
        outer.append(module)
    return None


def _require_state(model: nn.Module, caller: str) -> PRACState:
    state = get_prac_state(model)
    if state is None:
        raise ValueError(f"{caller}: PRAC is not applied to this model; call apply_prac(model, config) first")
    return state


def is_prac_model(model: nn.Module) -> bool:
    return get_prac_state(model) is not None


def remove_prac(model: nn.Module) -> nn.Module:
    """Put the original modules back (the same Parameter objects); drop the PRAC state."""
    state = _require_state(model, "remove_prac")
    owner = next(m for m in unwrap_chain(model) if _STATE_ATTR in m.__dict__)
    if state.fused_loss:
        from prac_dist.loss import uninstall_fused_loss

        uninstall_fused_loss(owner)
    for handle in reversed(state.handles):
        handle.remove()
    for parent, attr, original in reversed(state.swaps):
        site, name = swap_site(parent, attr)
        keep_peft_layers(getattr(site, name), original)
        setattr(site, name, original)
    del owner.__dict__[_STATE_ATTR]
    return model


def step(model: nn.Module) -> None:
    """Advance the subspace schedule by one optimizer step (Q1 due every T1 steps, Q2 every T2)."""
    state = _require_state(model, "step")
    state.step += 1
    for comp in state.compressors.values():
        comp.mark(state.step)
    _drift_refreshes(state)
    _reallocate(state)


def _drift_refreshes(state: PRACState) -> None:
    """principal_schedule='drift': a refresh for every basis whose captured share fell (one host read per
    step, the schedule's price: the solve it may skip cannot be skipped without knowing)."""
    flags = {name: f for name, c in state.compressors.items() if (f := c.drifted()) is not None}
    if not flags:
        return
    device = next(iter(flags.values())).device
    for name, hit in zip(flags, torch.stack([f.to(device) for f in flags.values()]).tolist()):
        if hit:
            state.compressors[name].principal_due = True


def _reallocate(state: PRACState) -> None:
    """adaptive_rank='global': once every base has the curve of a scheduled refresh, move the budgets.

    The total is what the ratios give (so are the stored bytes); a base whose budget changed gets a
    refresh at the next forward, from that step's batch, which does not start another reallocation.
    """
    bases = state.global_bases()
    if not bases or any(c.curve is None for c in bases.values()):
        return
    budgets = allocate_budgets({k: c.curve for k, c in bases.items()}, _global_total(state.config, bases))
    for name, comp in bases.items():
        comp.curve = None
        if budgets[name] != comp.budget:
            comp.budget, comp.principal_due, comp.followup = budgets[name], True, True


def _global_total(cfg: PRACConfig, bases: Dict[str, Compressor]) -> int:
    """Σ r1 + r2 the ratios give these bases: what adaptive_rank='global' may redistribute."""
    return sum(sum(cfg.ranks(c.n, nonlinear=False)) for c in bases.values())


def hook_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module):
    """Make `optimizer.step()` also advance the PRAC schedule; returns a removable handle."""
    _require_state(model, "hook_optimizer")
    return optimizer.register_step_post_hook(lambda *_: step(model))


def prac_state_dict(model: nn.Module) -> dict:
    """Everything a resumed run needs to continue exactly: counters, bases, draw indices."""
    state = _require_state(model, "prac_state_dict")
    return {
        "step": state.step,
        "config": state.config.to_dict(),
        "compressors": {name: comp.state_dict() for name, comp in state.compressors.items()},
    }


def load_prac_state_dict(model: nn.Module, sd: dict) -> None:
    state = _require_state(model, "load_prac_state_dict")
    saved, here = set(sd["compressors"]), set(state.compressors)
    if saved != here:
        raise ValueError(f"PRAC state does not match this model: only in checkpoint {sorted(saved - here)[:5]}, "
                         f"only in model {sorted(here - saved)[:5]}")
    device = next((p.device for p in model.parameters() if p.device.type != "meta"), torch.device("cpu"))
    for name, comp in state.compressors.items():
        comp.load_state_dict(sd["compressors"][name], device=device)
    bases = state.global_bases()
    total, expected = sum(c.budget for c in bases.values()), _global_total(state.config, bases)
    if total != expected:
        raise ValueError(f"PRAC state: the linear bases' r1 + r2 add up to {total} in the checkpoint, {expected} "
                         f"for this model's ratios (adaptive_rank='global' keeps the total; the ratios must match)")
    state.step = int(sd["step"])


def prac_stats(model: nn.Module) -> Dict[str, float]:
    """Share of ‖X‖²_F the principal subspace captured at its last refresh, per basis group.

    The shares live on the device during training; this is where they are read (a host sync).
    """
    state = _require_state(model, "prac_stats")
    return {name: float(comp.energy) for name, comp in state.compressors.items() if comp.energy is not None}


def nonfinite_refreshes(model: nn.Module) -> int:
    """Refreshes, over all basis groups, that saw inf/nan activations and kept the previous basis."""
    state = _require_state(model, "nonfinite_refreshes")
    return sum(int(c.nonfinite_refreshes) for c in state.compressors.values() if c.nonfinite_refreshes is not None)
