"""The model registry is the one table every part reads: each registered family, built tiny, must be
patched, get (or rightly not get) the fused loss, have a planner shape and FSDP layer path, and so on.
A family added to the registry but missing from any part fails here."""

import pytest
import torch
from benchmarks._tiny_models import FAMILIES, build

from prac_dist import PRACConfig, apply_prac, remove_prac
from prac_dist.fsdp.parallelize import find_decoder_layers
from prac_dist.loss import install_fused_loss, uninstall_fused_loss
from prac_dist.models import ARCHITECTURES
from prac_dist.patching.apply import get_prac_state
from prac_dist.patching.modules import PRACLinear
from prac_dist.models import PRESETS, shape_from_config
from prac_dist.models.shapes import build_model as build_preset
from prac_dist.train.models import PRESETS as TRAIN_PRESETS

REGISTERED = sorted(ARCHITECTURES)


def test_every_registered_family_has_a_tiny_test_model():
    assert set(REGISTERED) <= set(FAMILIES), f"add a tiny config to benchmarks/_tiny_models.py for " \
                                             f"{sorted(set(REGISTERED) - set(FAMILIES))}"


@pytest.mark.parametrize("model_type", REGISTERED)
def test_registry_entry_names_the_model(model_type):
    arch, model = ARCHITECTURES[model_type], build(model_type)
    assert type(model).__name__ == arch.causal_lm
    assert type(model.config).__name__ == arch.config_class


@pytest.mark.parametrize("model_type", REGISTERED)
def test_patching_follows_the_registry(model_type):
    arch, model = ARCHITECTURES[model_type], build(model_type)
    apply_prac(model, PRACConfig(fused_loss=False))
    state = get_prac_state(model)
    block = find_decoder_layers(model)[0]
    modules = dict(block.named_modules())
    for group in arch.linear_groups:
        found = [name for name in modules if name.rsplit(".", 1)[-1] in group]
        assert found, f"{model_type}: no module of group {group} in a decoder block"
        exact = [n for n in found if any(n.endswith(s) for s in arch.attention_output)]
        compressed = [modules[n] for n in found if n not in exact]
        assert all(isinstance(m, PRACLinear) for m in compressed), (model_type, group)
        assert all(not isinstance(modules[n], PRACLinear) for n in exact), (model_type, exact)
        by_parent = {}
        for n in found:
            if n not in exact:
                by_parent.setdefault(n.rsplit(".", 1)[0], set()).add(id(modules[n].prac_compressor))
        assert all(len(ids) == 1 for ids in by_parent.values()), f"{model_type}: {group} must share one basis"
    kinds = {type(m).__name__ for m in block.modules()}
    assert ("PRACRMSNorm" if arch.norm == "rms" else "PRACLayerNorm") in kinds
    assert ("PRACSwiGLUMLP" in kinds) == (arch.mlp == "swiglu")
    assert ("PRACGELU" in kinds) == (arch.activation is not None)
    assert state.compressors
    remove_prac(model)


@pytest.mark.parametrize("model_type", REGISTERED)
def test_fused_loss_follows_the_registry(model_type):
    arch, model = ARCHITECTURES[model_type], build(model_type)
    assert install_fused_loss(model) == arch.fused_loss
    uninstall_fused_loss(model)
    apply_prac(model, PRACConfig())
    assert get_prac_state(model).fused_loss == arch.fused_loss


@pytest.mark.parametrize("model_type", REGISTERED)
def test_planner_and_fsdp_follow_the_registry(model_type):
    arch, model = ARCHITECTURES[model_type], build(model_type)
    shape = shape_from_config(model.config)
    assert shape.family == arch.shape
    # The planner's shape leaves out Qwen2's q/k/v biases and Qwen3's per-head q/k norms: 0.24% of this
    # tiny model (hidden 64), less at real widths. Everything else must be counted.
    assert shape.num_parameters() == pytest.approx(sum(p.numel() for p in model.parameters()), rel=0.003)
    layers = find_decoder_layers(model)
    node = model
    for part in arch.layers_path.split("."):
        node = getattr(node, part)
    assert layers is node and len(layers) == shape.layers


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_registered_shapes(name):
    shape = PRESETS[name]
    with torch.device("meta"):
        model = build_preset(shape)
    arch = ARCHITECTURES[model.config.model_type]
    assert arch.shape == shape.family and type(model).__name__ == arch.causal_lm
    assert sum(p.numel() for p in model.parameters()) == shape.num_parameters()
    if shape.family == "llama":
        assert TRAIN_PRESETS[name] is shape  # prac-train's presets are the planner's table, not a copy


def test_outside_the_registry_the_layers_are_found_by_structure():
    model = build("phi3")
    assert find_decoder_layers(model) is model.model.layers
    neox = build("gpt_neox")
    assert find_decoder_layers(neox) is neox.gpt_neox.layers
