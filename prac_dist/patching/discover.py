"""Structural discovery: what to patch in a decoder outside the model registry, from one traced forward.

One forward on a probe batch (eval mode, the caller's RNG untouched) records, for
every module, the tensor it read and the tensor it returned, and for every tensor saved for backward
the module that saved it. From that, not from module names:

- linears (nn.Linear, transformers Conv1D) that read the same tensor form one group: one basis pair,
  one stored Z (q/k/v; gate/up; a MoE block's shared expert and its gate);
- a group whose input some other op keeps for backward anyway (the attention output, which SDPA
  saves and o_proj reads as a view) is left exact: compressing it would add Z and free nothing;
- a module with one 1-D weight over the last dimension is tried as RMSNorm (w · x̂), Gemma's
  (1 + w) · x̂ and LayerNorm; a parameterless elementwise module as GELU; a module whose linear
  children compute down(silu(gate x) · up x) (two linears or one fused gate_up) as the lean SwiGLU,
  or down(gelu(up x)) as the GELU MLP whose down projection stores nothing (ops/gelu_linear.py);
  Each candidate is the very replacement module apply_prac installs (uncompressed); it qualifies
  only when, on the module's own probe input, its output and its gradients (input and parameters,
  for a random upstream gradient) equal the module's to the dtype's rounding. The bytes each saves
  for backward on the probe are recorded, so that apply_prac installs an uncompressed replacement
  only where it saves less. Anything else is left alone, with the reason recorded.

The probe is the caller's `example_inputs` when given, else random token ids passed the way the
forward's signature asks for them: `input_ids=` (Hugging Face), `tokens=` (torchtitan), `idx=`
(nanoGPT, LitGPT), or else as the first positional argument; the ids are drawn below the vocabulary
size (config.vocab_size, else the input embedding's rows). A forward that needs anything else is
not guessed at: probe_inputs names what to pass.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from prac_dist.core.subspace import Compressor
from prac_dist.memory.accounting import measure_saved_bytes
from prac_dist.models.registry import ARCHITECTURES
from prac_dist.ops.gelu import GELU_APPROXIMATIONS
from prac_dist.patching.modules import (PRACGELU, PRACGELUMLP, PRACLayerNorm, PRACRMSNorm, PRACSwiGLUMLP,
                                        is_conv1d, is_linear, linear_shape)

__all__ = ["Discovery", "LinearGroup", "Site", "discover", "group_name", "replacement", "probe_inputs", "ProbeError"]

# Relative error (max |a - b| / max |b|) within which a replacement counts as the module itself:
# float32 only reorders sums (a few ulp, 1e-7); 16-bit formats round x̂ once more in the lean RMSNorm
# than Gemma does (one ulp: 2^-8 for bfloat16). A wrong formula (w vs 1 + w, exact vs tanh GELU in
# float32, a swapped gate/up) is off by 1e-3 or far more.
_TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}
_PROBE_SHAPE = (2, 16)
_TOKEN_ARGUMENTS = ("input_ids", "tokens", "idx")
_DEFAULT_EPS = (1e-5, 1e-6)  # torch's LayerNorm and most RMSNorms  # Hugging Face, torchtitan, nanoGPT / LitGPT
_COMPRESSES_ITS_INPUT = ("rms", "layer", "gelu")  # (SwiGLU / GELU MLPs compress tensors made inside them)


@dataclass(frozen=True)
class LinearGroup:
    name: str
    """Group name (seeds the random subspaces, keys prac_state_dict): parent path + '+'-joined members."""
    members: Tuple[str, ...]
    """Full module names of the linears that read one tensor."""
    kept_by: Optional[str] = None
    """Type of the module that saves this input for backward anyway (then the group stays exact)."""


@dataclass(frozen=True)
class Site:
    name: str
    kind: str
    """'rms' (offset, eps), 'layer' (eps), 'swiglu' (names, up_first), 'gelu' (approximate) or 'gelu_mlp'
    (names = (up, act, down), approximate)."""
    options: Tuple[Tuple[str, object], ...] = ()
    width: int = 0
    """Width of the input the replacement would compress (for a SwiGLU MLP: of its input x)."""
    saved_before: int = 0
    saved_after: int = 0
    """Bytes the module and its uncompressed replacement saved for backward on the probe."""
    kept_by: Optional[str] = None
    """For a norm or GELU: type of another module that saves the same input anyway (GPT-NeoX's two
    LayerNorms read one x): a compressed copy per reader would add bytes, so the input stays exact."""

    def option(self, key: str):
        return dict(self.options)[key]


@dataclass
class Discovery:
    groups: List[LinearGroup] = field(default_factory=list)
    sites: List[Site] = field(default_factory=list)
    left_alone: Dict[str, str] = field(default_factory=dict)
    """Norm/MLP/activation-looking modules not swapped, and why."""


@dataclass
class _Call:
    module: nn.Module
    inputs: Tuple[torch.Tensor, ...]
    output: Optional[torch.Tensor]
    calls: int = 1


def _key(t: torch.Tensor):
    return t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype


def _trace(model: nn.Module, probe: Tuple[tuple, dict]):
    """Run the probe forward; return ({name: _Call}, {storage ptr: saving module types})."""
    names = {id(m): n for n, m in model.named_modules()}
    calls: Dict[str, _Call] = {}
    stack: List[nn.Module] = []
    saved: Dict[int, set] = {}
    resident = {p.untyped_storage().data_ptr() for p in list(model.parameters()) + list(model.buffers())}

    def pre(module, args, kwargs):
        stack.append(module)
        name = names[id(module)]
        if name in calls:
            calls[name].calls += 1
            return
        tensors = tuple(a for a in args if isinstance(a, torch.Tensor))
        if not tensors and isinstance(kwargs.get("hidden_states"), torch.Tensor):
            tensors = (kwargs["hidden_states"],)
        calls[name] = _Call(module, tensors, None)

    def post(module, args, kwargs, out):
        if stack and stack[-1] is module:
            stack.pop()
        call = calls[names[id(module)]]
        if call.output is None and call.calls == 1 and isinstance(out, torch.Tensor):
            call.output = out

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in resident:
            saved.setdefault(ptr, set()).add(id(stack[-1]) if stack else None)
        return t

    handles = [h for m in model.modules() for h in (m.register_forward_pre_hook(pre, with_kwargs=True),
                                                    m.register_forward_hook(post, with_kwargs=True,
                                                                            always_call=True))]
    was_training = model.training
    try:
        model.eval()  # no dropout: each candidate is compared with the module on the same input
        with torch.random.fork_rng(devices=[]), torch.enable_grad(), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            _run_probe(model, probe)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return calls, saved


class ProbeError(ValueError):
    """Structural discovery cannot run the model's forward: the message says what to pass instead."""


def _run_probe(model: nn.Module, probe: Tuple[tuple, dict]) -> None:
    args, kwargs = probe
    try:
        model(*args, **kwargs)
    except Exception as exc:  # the model's own error, whatever its type: one line naming the way out
        first = (str(exc).splitlines() or [""])[0][:160]
        raise ProbeError(f"apply_prac: structural discovery ran {type(model).__name__}.forward on the probe "
                         f"{_describe(probe)} and it raised {type(exc).__name__}: {first}; pass "
                         f"apply_prac(model, config, example_inputs=...) with one batch its forward takes, or "
                         f"PRACConfig.target_modules") from exc


def _describe(probe: Tuple[tuple, dict]) -> str:
    def one(v):
        return f"{v.dtype}{tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__
    args, kwargs = probe
    return "(" + ", ".join([one(a) for a in args] + [f"{k}={one(v)}" for k, v in kwargs.items()]) + ")"


def probe_inputs(model: nn.Module, example_inputs=None) -> Tuple[tuple, dict]:
    """(args, kwargs) of the probe forward: `example_inputs` as given (a tensor, a tuple of positional
    arguments or a dict of keyword arguments), else random token ids placed as the forward's signature asks."""
    _check_materialised(model)
    if example_inputs is not None:
        if isinstance(example_inputs, torch.Tensor):
            return (example_inputs,), {}
        if isinstance(example_inputs, (tuple, list)):
            return tuple(example_inputs), {}
        if isinstance(example_inputs, dict):
            return (), dict(example_inputs)
        raise ValueError(f"apply_prac: example_inputs is a {type(example_inputs).__name__}; accepted are a "
                         f"tensor (the first positional argument), a tuple of positional arguments or a dict "
                         f"of keyword arguments of {type(model).__name__}.forward")
    where, why = _token_argument(model)
    vocab = _vocab_size(model)
    if where is None or vocab is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        raise ProbeError(f"apply_prac: model type {model_type!r} is not in the model registry (registered: "
                         f"{sorted(ARCHITECTURES)}) and structural discovery cannot build its probe batch "
                         f"({why if where is None else 'no config.vocab_size and no nn.Embedding to bound the ids'}); "
                         f"pass apply_prac(model, config, example_inputs=...) with one batch its forward takes, "
                         f"or PRACConfig.target_modules with the names of the linear layers to compress")
    device = next(iter(model.parameters())).device
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, _PROBE_SHAPE, generator=g).to(device)
    return ((ids,), {}) if where == 0 else ((), {where: ids})


def _check_materialised(model: nn.Module) -> None:
    param = next(iter(model.parameters()), None)
    if param is not None and (param.device.type == "meta" or param.numel() == 0):
        raise ProbeError(f"apply_prac: {type(model).__name__} is not in the model registry, and structural "
                         f"discovery runs one forward, which needs materialised weights (found "
                         f"{'meta' if param.device.type == 'meta' else 'partitioned (ZeRO-3)'} parameters); "
                         f"apply PRAC before deepspeed.zero.Init / meta-device construction, pass "
                         f"PRACConfig.target_modules, or register the family")


def _token_argument(model: nn.Module):
    """(keyword name, None), (0, None) for the first positional argument, or (None, why not)."""
    forward = type(model).forward
    if getattr(forward, "__name__", "") == "_forward_unimplemented":
        return None, f"{type(model).__name__} defines no forward"
    signature = inspect.signature(forward)
    params = list(signature.parameters.values())[1:]  # without self
    named = next((p for p in params if p.name in _TOKEN_ARGUMENTS and p.kind is not p.VAR_POSITIONAL), None)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    token = named or (positional[0] if positional and positional[0] is params[0] else None)
    if token is None:
        return None, f"{type(model).__name__}.forward{signature} takes no token tensor first"
    required = [p.name for p in params if p is not token and p.default is p.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if required:
        return None, f"{type(model).__name__}.forward{signature} needs more than a token tensor: {', '.join(required)}"
    return (0 if token.kind is token.POSITIONAL_ONLY or named is None else token.name), None


def _vocab_size(model: nn.Module) -> Optional[int]:
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(vocab, int):
        return vocab
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    return int(emb.num_embeddings) if isinstance(emb, nn.Embedding) else None


def discover(model: nn.Module, kernel: str = "auto", example_inputs=None) -> Discovery:
    """What apply_prac patches in `model`, found from one forward on `example_inputs` (default: random token
    ids where the forward's signature takes them; see probe_inputs)."""
    calls, saved = _trace(model, probe_inputs(model, example_inputs))
    found = Discovery()
    found.groups = _linear_groups(model, calls, saved)
    swapped: List[str] = []
    for name, module in model.named_modules():
        call = calls.get(name)
        if call is None or any(name.startswith(p + ".") for p in swapped):
            continue  # not run by the probe, or inside an MLP already swapped whole
        site, why = _match(name, module, call, kernel)
        if site is not None:
            if site.kind in _COMPRESSES_ITS_INPUT:
                mine = {id(m) for m in module.modules()}
                site = replace(site, kept_by=_kept_by(model, saved, call.inputs[0], mine))
            found.sites.append(site)
            swapped.append(name)
        elif why is not None:
            found.left_alone[name] = why
    return found


# ----------------------------------------------------------------------------- linear groups
def _linear_groups(model: nn.Module, calls: Dict[str, _Call], saved: Dict[int, set]) -> List[LinearGroup]:
    by_input: Dict[tuple, List[str]] = {}
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    for name, module in model.named_modules():
        call = calls.get(name)
        # The LM head is the fused loss's business (and the registry leaves it exact too).
        if not is_linear(module) or module is head or call is None or not call.inputs:
            continue
        # A linear run more than once (shared weights) reads several tensors: a group of its own.
        key = _key(call.inputs[0]) if call.calls == 1 else ("alone", name)
        by_input.setdefault(key, []).append(name)
    member_ids = {name: id(model.get_submodule(name)) for names in by_input.values() for name in names}
    groups = []
    for key, members in by_input.items():
        x = calls[members[0]].inputs[0]
        kept_by = _kept_by(model, saved, x, {member_ids[m] for m in members})
        groups.append(LinearGroup(group_name(members), tuple(members), kept_by))
    return groups


def _kept_by(model: nn.Module, saved: Dict[int, set], x: torch.Tensor, readers: set) -> Optional[str]:
    """Type of a module other than `readers` that saved x's storage for backward on the probe, if any."""
    savers = saved.get(x.untyped_storage().data_ptr(), set()) - readers
    if not savers:
        return None
    saver = next((m for m in model.modules() if id(m) in savers), None)
    return type(saver).__name__ if saver is not None else "(outside modules)"


def group_name(members) -> str:
    parents = {m.rsplit(".", 1)[0] if "." in m else "" for m in members}
    if len(parents) == 1:  # siblings: the registry's naming, "model.layers.0.self_attn.q_proj+k_proj+v_proj"
        parent = parents.pop()
        rel = "+".join(m.rsplit(".", 1)[-1] for m in members)
        return f"{parent}.{rel}" if parent else rel
    prefix = _common_prefix(members)
    rel = "+".join(m[len(prefix) + 1:] if prefix else m for m in members)
    return f"{prefix}.{rel}" if prefix else rel


def _common_prefix(names: List[str]) -> str:
    parts = [n.split(".")[:-1] for n in names]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


# ----------------------------------------------------------------------------- norm / MLP / activation sites
def _match(name: str, module: nn.Module, call: _Call, kernel: str):
    """(Site, None) when a lean replacement is the module; (None, reason) for a look-alike; (None, None)."""
    if is_linear(module) or len(call.inputs) != 1 or call.output is None:
        return None, None
    x = call.inputs[0]
    if call.calls != 1:
        return None, (f"run {call.calls} times in one forward" if _looks_like_site(module, x) else None)
    if not x.is_floating_point() or call.output.shape != x.shape:
        return None, None
    params = dict(module.named_parameters(recurse=False))
    children = dict(module.named_children())
    if not children and set(params) in ({"weight"}, {"weight", "bias"}) and params["weight"].dim() == 1 \
            and params["weight"].numel() == x.shape[-1]:
        return _first_match(name, module, x, _candidates(module, _norm_sites(module), kernel),
                            "no RMSNorm, (1 + w) RMSNorm or LayerNorm formula matches it")
    if not children and not params and not list(module.buffers()):
        return _first_match(name, module, x, _candidates(module, _gelu_sites(module), kernel), None)
    linears = {n: c for n, c in children.items() if is_linear(c)}
    if linears and not params and all(is_linear(c) or not any(True for _ in c.parameters())
                                      for c in children.values()):
        others = {n: c for n, c in children.items() if not is_linear(c)}
        sites = list(_swiglu_sites(linears)) + list(_gelu_mlp_sites(linears, others))
        return _first_match(name, module, x, _candidates(module, sites, kernel),
                            None if len(linears) > 3 else "neither down(silu(gate x) * up x) nor down(gelu(up x))")
    return None, None


def _looks_like_site(module: nn.Module, x) -> bool:
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.Tensor) and weight.dim() == 1


def replacement(module: nn.Module, site: Site, comps: Tuple[Optional[Compressor], ...], kernel: str) -> nn.Module:
    """The lean module for a site: what discovery checks (comps None) and apply_prac installs."""
    if site.kind == "rms":
        return PRACRMSNorm(module, comps[0], kernel, site.option("offset"), site.option("eps"))
    if site.kind == "layer":
        return PRACLayerNorm(_AsLayerNorm(module, site.option("eps")), comps[0])
    if site.kind == "gelu":
        return PRACGELU(module, site.option("approximate"), comps[0])
    if site.kind == "gelu_mlp":
        return PRACGELUMLP(module, site.option("names"), site.option("approximate"), comps[0])
    return PRACSwiGLUMLP(module, comps[0], comps[1], kernel, names=site.option("names"),
                         up_first=site.option("up_first"))


class _AsLayerNorm:
    """What PRACLayerNorm reads from the module it replaces (weight, bias, eps)."""

    def __init__(self, module: nn.Module, eps: float):
        self.weight, self.bias, self.eps = module.weight, getattr(module, "bias", None), eps


def _candidates(module: nn.Module, sites, kernel: str):
    for site in sites:
        yield site, replacement(module, site, (None, None), kernel)


def _norm_sites(module: nn.Module):
    eps = next((getattr(module, a) for a in ("variance_epsilon", "eps", "epsilon") if
                isinstance(getattr(module, a, None), (int, float))), None)
    # A norm that keeps its eps in the code (nanoGPT's LayerNorm passes 1e-5 to F.layer_norm): the usual
    # values are tried, and the closest candidate wins (_first_match).
    for e in (_DEFAULT_EPS if eps is None else (eps,)):
        if getattr(module, "bias", None) is None:
            for offset in (0.0, 1.0):  # w · x̂ (LLaMA) and (1 + w) · x̂ (Gemma)
                yield Site("", "rms", (("offset", offset), ("eps", float(e))))
        yield Site("", "layer", (("eps", float(e)),))


def gelu_kind(act: nn.Module) -> Optional[str]:
    """Which GELU an elementwise module computes ('none' or 'tanh'), None for anything else.

    Decided in float64 on a grid over [-6, 6]: the two forms differ by up to 5e-4 there, less than
    bfloat16 rounding, so a 16-bit probe alone could not tell them apart.
    """
    t = torch.linspace(-6, 6, 1201, dtype=torch.float64)
    try:
        with torch.no_grad():
            y = act(t)
    except (RuntimeError, TypeError, ValueError):
        return None
    if not isinstance(y, torch.Tensor) or y.shape != t.shape:
        return None
    for approximate in dict.fromkeys(GELU_APPROXIMATIONS.values()):
        if (y - F.gelu(t, approximate=approximate)).abs().max().item() <= 1e-6:
            return approximate
    return None


def _gelu_sites(module: nn.Module):
    approximate = gelu_kind(module)
    if approximate is not None:
        yield Site("", "gelu", (("approximate", approximate),))


def _swiglu_sites(linears: Dict[str, nn.Module]):
    names = list(linears)
    if len(names) == 3:
        for down in names:
            a, b = [n for n in names if n != down]
            for gate, up in ((a, b), (b, a)):
                yield Site("", "swiglu", (("names", (gate, up, down)), ("up_first", False)))
    elif len(names) == 2:  # one fused gate_up linear and down
        for fused, down in (names, names[::-1]):
            if linear_shape(linears[fused], is_conv1d(linears[fused]))[1] % 2 == 0:
                for up_first in (False, True):
                    yield Site("", "swiglu", (("names", (fused, fused, down)), ("up_first", up_first)))


def _gelu_mlp_sites(linears: Dict[str, nn.Module], others: Dict[str, nn.Module]):
    """down(act(up x)) with act a GELU child: up and down in either order."""
    if len(linears) != 2:
        return
    a, b = linears
    for act, module in others.items():
        approximate = gelu_kind(module)
        if approximate is None:
            continue
        for up, down in ((a, b), (b, a)):
            yield Site("", "gelu_mlp", (("names", (up, act, down)), ("approximate", approximate)))


def _first_match(name, module, x, candidates, look_alike_reason):
    """The candidate closest to the module among those within tolerance (exact GELU and its tanh form
    both pass in bfloat16; the closer one is the module's)."""
    best = None
    for site, lean in candidates:
        why = _differs(module, lean, x)
        if why is None and (best is None or lean.__dict__["_probe_error"] < best[1].__dict__["_probe_error"]):
            best = (site, lean)
    if best is not None:
        site, lean = best
        before, after = lean.__dict__["_probe_saved_bytes"]
        return Site(name, site.kind, site.options, int(x.shape[-1]), before, after), None
    return None, look_alike_reason


def _differs(module: nn.Module, replacement: nn.Module, x: torch.Tensor) -> Optional[str]:
    """None when `replacement` gives the module's output and gradients and saves no more; else why not."""
    tol = _TOLERANCE.get(x.dtype, 1e-5)
    params = [p for p in module.parameters() if p.requires_grad]
    results = []
    for fn in (module, replacement):
        xi = x.detach().clone().requires_grad_(True)
        try:
            with torch.enable_grad():
                report = measure_saved_bytes(lambda: fn(xi), module)
        except (RuntimeError, ValueError) as exc:  # e.g. a wrong guess of which linear is down: shapes clash
            return f"does not run ({str(exc).splitlines()[0][:80]})"
        y = report.output
        if not isinstance(y, torch.Tensor):
            return "no tensor output"
        results.append((y, xi, report.total_bytes))
    (y0, x0, bytes0), (y1, x1, bytes1) = results
    if y0.dtype != y1.dtype or y0.shape != y1.shape:
        return f"output {y1.dtype}{tuple(y1.shape)} vs {y0.dtype}{tuple(y0.shape)}"
    replacement.__dict__["_probe_error"] = _rel_err(y1, y0)
    if _rel_err(y1, y0) > tol:
        return f"output differs by {_rel_err(y1, y0):.2g} (relative)"
    dy = torch.randn(y0.shape, generator=torch.Generator().manual_seed(1)).to(y0)
    g0 = torch.autograd.grad(y0, [x0] + params, dy, allow_unused=True)
    g1 = torch.autograd.grad(y1, [x1] + params, dy, allow_unused=True)
    for which, a, b in zip(["input"] + [f"param {i}" for i in range(len(params))], g1, g0):
        if (a is None) != (b is None):
            return f"{which} gradient missing"
        if a is not None and _rel_err(a, b) > tol:
            return f"{which} gradient differs by {_rel_err(a, b):.2g} (relative)"
    replacement.__dict__["_probe_saved_bytes"] = (bytes0, bytes1)
    return None


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = b.detach().abs().max().float().item()
    return (a.detach().float() - b.detach().float()).abs().max().item() / (scale if scale > 0 else 1.0)
