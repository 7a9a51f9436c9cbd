"""Structural discovery on tiny random-weight decoders of 13 families (registry ones included, as a check
that the probe finds what the registry names).

For each family: every parameter's gradient equals the unpatched model's at full rank (r1 + r2 = n,
where PRAC's reconstruction is exact up to float32 rounding), and the decoder layers save at most
0.75x the unpatched bytes for backward in bfloat16 (MoE: 1.0x) with PRACConfig(compress_nonlinear=False)
and with PRACConfig()."""

import copy
import warnings

import pytest
import torch
from benchmarks._tiny_models import FAMILIES, MOE, batch, build

from prac_dist import PRACConfig, apply_prac, remove_prac
from prac_dist.fsdp.parallelize import find_decoder_layers
from prac_dist.memory import measure_saved_bytes
from prac_dist.models import ARCHITECTURES
from prac_dist.patching.apply import get_prac_state
from prac_dist.patching.discover import discover
from prac_dist.patching.modules import PRACLinear, PRACRMSNorm

# Projected storage everywhere (int8 storage of X, where a storage policy picks it, rounds X: not exact).
_PROJECTED = {f: "project" for f in ("linear_storage", "nonlinear_storage") if f in PRACConfig.field_names()}
FULL_RANK = PRACConfig(principal_ratio=0.5, random_ratio=0.5, nonlinear_principal_ratio=0.5,
                       nonlinear_random_ratio=0.5, storage_bits=16, **_PROJECTED)
# float32, 2 x 16 tokens: the reconstruction X [Q1 | Q2][Q1 | Q2]ᵀ and the lean ops' reordered sums leave
# relative gradient errors of at most ~1e-5 (measured); a wrong formula or a lost term is O(1).
GRAD_RTOL = 1e-3


def _quiet(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args)


def _grads(model, inputs):
    model.zero_grad(set_to_none=True)
    loss = model(**inputs).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_full_rank_gradients_are_exact(family):
    model = build(family)
    reference = copy.deepcopy(model)
    inputs = batch(model)
    loss0, g0 = _grads(reference, inputs)
    _quiet(apply_prac, model, FULL_RANK)
    assert get_prac_state(model).compressors, f"{family}: nothing was compressed"
    loss1, g1 = _grads(model, inputs)
    torch.testing.assert_close(loss1, loss0, rtol=1e-5, atol=1e-6)
    assert g1.keys() == g0.keys()
    for name, ref in g0.items():
        err = (g1[name] - ref).abs().max().item() / max(ref.abs().max().item(), 1e-12)
        assert err <= GRAD_RTOL, f"{family}: {name} gradient off by {err:.2e} (relative)"


def _decoder_bytes(model, inputs):
    layers = find_decoder_layers(model)
    return measure_saved_bytes(lambda: model(**inputs).loss, model, scope=layers).total_bytes


@pytest.mark.parametrize("compress_nonlinear", [False, True], ids=["linear_only", "default"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_saved_bytes_at_most_three_quarters(family, compress_nonlinear):
    model = build(family, torch.bfloat16)
    inputs = batch(model)
    before = _decoder_bytes(model, inputs)
    _quiet(apply_prac, model, PRACConfig() if compress_nonlinear else PRACConfig(compress_nonlinear=False))
    ratio = _decoder_bytes(model, inputs) / before
    limit = 1.0 if family in MOE else 0.75
    assert ratio <= limit, f"{family}: decoder saves {ratio:.3f}x the unpatched bytes (limit {limit})"


@pytest.mark.parametrize("family", sorted(ARCHITECTURES))
def test_discovery_finds_what_the_registry_names(family):
    """The probe, reading no names, groups q/k/v and gate/up and keeps the SDPA-fed output projection exact."""
    arch, model = ARCHITECTURES[family], build(family)
    found = discover(model)
    block = f"{arch.layers_path}.0."
    seen = set()
    for group in (g for g in found.groups if g.members[0].startswith(block)):
        rel = [m[len(block):] for m in group.members]
        last = tuple(r.rsplit(".", 1)[-1] for r in rel)
        assert last in arch.linear_groups, f"{family}: discovered group {rel} is not one the registry names"
        attention_output = any(rel[0].endswith(s) for s in arch.attention_output)
        assert (group.kept_by is not None) == attention_output, (family, rel, group.kept_by)
        seen.add(last)
    assert seen == set(arch.linear_groups)


@pytest.mark.parametrize("family", ["gemma2", "gemma3_text"])
def test_gemma_norm_gets_the_offset(family):
    """Gemma's RMSNorm is (1 + w) · x̂: discovery must find the offset, not install w · x̂."""
    model = build(family)
    found = discover(model)
    norms = [s for s in found.sites if s.kind == "rms"]
    assert norms and all(s.option("offset") == 1.0 for s in norms)
    _quiet(apply_prac, model, PRACConfig(compress_nonlinear=False))
    swapped = [m for m in model.modules() if isinstance(m, PRACRMSNorm)]
    assert len(swapped) == len(norms) and all(m.offset == 1.0 for m in swapped)


class _ScaledNorm(torch.nn.Module):
    """Looks like an RMSNorm (one weight over the last dim, an eps) but computes 2 · w · x̂ + 0.1."""

    def __init__(self, n):
        super().__init__()
        self.weight, self.eps = torch.nn.Parameter(torch.ones(n) + 0.1 * torch.randn(n)), 1e-6

    def forward(self, x):
        return 2 * self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) + 0.1


def test_an_unknown_norm_is_left_alone_and_named():
    model = build("olmo2")
    model.model.layers[0].post_attention_layernorm = _ScaledNorm(model.config.hidden_size)
    reference = copy.deepcopy(model)
    inputs = batch(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_prac(model, FULL_RANK)
    left = [str(w.message) for w in caught if "left unpatched" in str(w.message)]
    assert len(left) == 1 and "model.layers.0.post_attention_layernorm" in left[0]
    assert isinstance(model.model.layers[0].post_attention_layernorm, _ScaledNorm)
    assert isinstance(model.model.layers[1].post_attention_layernorm, PRACRMSNorm)
    torch.testing.assert_close(_grads(model, inputs)[0], _grads(reference, inputs)[0], rtol=1e-5, atol=1e-6)


def test_a_layer_whose_input_is_kept_anyway_stays_exact_and_is_named_once():
    """SDPA keeps its output for backward and o_proj reads a view of it: a Z would add bytes, free none."""
    model = build("mixtral")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_prac(model, PRACConfig())
    kept = [str(w.message) for w in caught if "left exact" in str(w.message)]
    assert len(kept) == 1 and "model.layers.*.self_attn.o_proj" in kept[0] and "MixtralAttention" in kept[0]
    attn = model.model.layers[0].self_attn
    assert not isinstance(attn.o_proj, PRACLinear) and isinstance(attn.q_proj, PRACLinear)
    assert attn.q_proj.prac_compressor is attn.v_proj.prac_compressor


def test_discovered_patch_round_trips():
    """remove_prac puts every original module back; the probe left the caller's RNG and training mode alone."""
    model = build("phi3")
    originals = dict(model.named_modules())
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    _quiet(apply_prac, model, PRACConfig())
    assert torch.equal(torch.rand(3), expected) and model.training
    remove_prac(model)
    assert all(originals[n] is m for n, m in model.named_modules())


def test_discovery_needs_materialised_weights():
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(build("olmo2").config)
    with pytest.raises(ValueError, match="materialised weights"):
        apply_prac(model, PRACConfig())


_LORA_TARGETS = {"olmo2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                 "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
                 "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]}


@pytest.mark.parametrize("order", ["before", "after"])
@pytest.mark.parametrize("family", sorted(_LORA_TARGETS))
def test_discovered_families_under_peft_lora(family, order):
    """LoRA on a discovered family, PRAC applied before or after get_peft_model: exact at full rank
    (a GELU MLP swapped before PEFT wraps its down projection must still run the LoRA path)."""
    import peft

    def lora_model(base, prac):
        model = copy.deepcopy(base)
        if prac and order == "before":
            _quiet(apply_prac, model, FULL_RANK)
        torch.manual_seed(1)
        model = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=_LORA_TARGETS[family],
                                                           init_lora_weights=False, lora_dropout=0.0))
        if prac and order == "after":
            _quiet(apply_prac, model, FULL_RANK)
        return model

    base = build(family)
    inputs = batch(base)
    _, want = _grads(lora_model(base, False), inputs)
    _, got = _grads(lora_model(base, True), inputs)
    assert got.keys() == want.keys() and any("lora_A" in k for k in want)
    for name, ref in want.items():
        err = (got[name] - ref).abs().max().item() / max(ref.abs().max().item(), 1e-12)
        assert err <= GRAD_RTOL, f"{family} ({order}): {name} gradient off by {err:.2e}"


def test_norms_sharing_one_input_keep_it_exact():
    """GPT-NeoX's two LayerNorms read the same x (parallel residual): one compressed copy each would add
    bytes next to the x the other keeps, so neither is compressed, and apply_prac says so."""
    model = build("gpt_neox")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_prac(model, PRACConfig())
    kept = [str(w.message) for w in caught if "left exact" in str(w.message)]
    assert len(kept) == 1 and "gpt_neox.layers.*.input_layernorm" in kept[0]
    assert "gpt_neox.layers.*.post_attention_layernorm" in kept[0]
    state = get_prac_state(model)
    assert not any("layernorm" in name for name in state.compressors)
    assert "gpt_neox.final_layer_norm" in state.compressors  # its input is its own


def test_discovered_groups_get_the_registry_storage_policy():
    """The storage policy weighs a group's total output width: discovered groups must pass it as the registry
    path does, so OLMo2 (LLaMA's linears) stores each group as LLaMA does."""
    def storage(family):
        model = build(family)
        _quiet(apply_prac, model, PRACConfig())
        return {name.split(".", 3)[-1]: comp.storage for name, comp in get_prac_state(model).compressors.items()
                if name.startswith("model.layers.0.") and ("proj" in name)}

    llama = storage("llama")
    assert storage("olmo2") == llama and set(llama.values()) == {"project", "int8"}
