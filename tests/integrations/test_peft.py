"""PEFT LoRA with PRAC, in either order: exact at full rank, shared bases, fused loss, merge, saved bytes.

PRAC compresses the LoRA A matrix's input (the only activation a LoRA layer saves at full width,
prac_dist/patching/lora.py); the frozen base layer saves no input at all.
"""

import copy

import pytest
import torch

import peft
from peft import LoraConfig, get_peft_model  # noqa: E402

import prac_dist  # noqa: E402
from prac_dist import PRACConfig, apply_prac, hook_optimizer, is_prac_model, remove_prac  # noqa: E402
from prac_dist.memory import measure_saved_bytes  # noqa: E402
from prac_dist.patching import get_prac_state  # noqa: E402

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
FULL = PRACConfig(principal_ratio=0.5, random_ratio=0.5, nonlinear_principal_ratio=0.5, nonlinear_random_ratio=0.5,
                  linear_storage="project", nonlinear_storage="project", storage_bits=16)  # exact at full rank
# Full rank reproduces dW up to float32 rounding of the eigen-basis products (measured 1e-4 relative).
TOL = 1e-3


def lora(targets, **kw):
    # init_lora_weights=False: B random too, so dA = s (Bᵀ dY)ᵀ X is not identically zero.
    return LoraConfig(r=4, target_modules=targets, init_lora_weights=False, lora_dropout=0.0, **kw)


def peft_model(base, targets, prac=None, order="after"):
    model = copy.deepcopy(base)
    if prac is not None and order == "before":
        apply_prac(model, prac)
    torch.manual_seed(1)  # the same LoRA weights in every variant
    model = get_peft_model(model, lora(targets))
    if prac is not None and order == "after":
        apply_prac(model, prac)
    return model


def loss_and_grads(model, x):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=x, labels=x)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def assert_same_grads(got, want):
    assert set(got) == set(want) and want
    for name in want:
        err = (got[name] - want[name]).abs().max() / want[name].abs().max().clamp_min(1e-12)
        assert err < TOL, (name, float(err))


@pytest.mark.parametrize("order", ["after", "before"])
def test_lora_gradients_exact_at_full_rank_llama(make_llama, order):
    base, x = make_llama(), torch.randint(0, 128, (2, 16))
    want_loss, want = loss_and_grads(peft_model(base, LLAMA_TARGETS), x)
    model = peft_model(base, LLAMA_TARGETS, FULL, order)
    got_loss, got = loss_and_grads(model, x)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-6, atol=1e-6)
    assert_same_grads(got, want)
    assert any(k.endswith("lora_A.default.weight") for k in got)


@pytest.mark.parametrize("order", ["after", "before"])
def test_lora_gradients_exact_at_full_rank_gpt2_and_merge(make_gpt2, order):
    """GPT-2's Conv1D keeps W as (in, out): the LoRA merge must still add B A the right way round."""
    base, x = make_gpt2(), torch.randint(0, 128, (2, 16))
    targets = ["c_attn", "c_fc"]
    ref = peft_model(base, targets)
    want_loss, want = loss_and_grads(ref, x)
    model = peft_model(base, targets, FULL, order)
    got_loss, got = loss_and_grads(model, x)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-6, atol=1e-6)
    assert_same_grads(got, want)
    assert is_prac_model(model)  # "before": a prac_dist call on the PeftModel installs the merge guard
    merged = model.merge_and_unload()
    assert_no_prac(merged)
    merged_ref = ref.merge_and_unload()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=x).logits, merged_ref(input_ids=x).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("order", ["after", "before"])
def test_shared_bases_fused_loss_and_see_through(make_llama, order):
    model = peft_model(make_llama(), LLAMA_TARGETS, PRACConfig(), order)
    assert is_prac_model(model)
    state = get_prac_state(model)
    assert state.fused_loss
    x = torch.randint(0, 128, (2, 16))
    out = model(input_ids=x, labels=x)  # "before": the LoRA layers are found at this first training forward
    assert out.logits is None  # the fused head returned the loss without materialising logits
    attn = model.base_model.model.model.layers[0].self_attn
    comps = {id(getattr(attn, n).lora_A["default"].forward.comp) for n in ("q_proj", "k_proj", "v_proj")}
    assert len(comps) == 1  # one basis and one stored Z for q/k/v's A matrices
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    hook_optimizer(optimizer, model)
    out.loss.backward()
    optimizer.step()
    prac_dist.step(model)
    assert prac_dist.prac_state_dict(model)["step"] == 2


def assert_no_prac(model):
    assert not is_prac_model(model)
    assert [type(m).__name__ for m in model.modules() if type(m).__module__.startswith("prac_dist")] == []
    assert not any("forward" in vars(m) for m in model.modules())  # no LoRAInputForward left on lora_A
    assert not any(k.startswith("_prac") for m in model.modules() for k in vars(m))  # no state, no fused loss
    assert not model._forward_pre_hooks  # the training-forward watch


@pytest.mark.parametrize("order", ["after", "before"])
@pytest.mark.parametrize("how", ["merge_and_unload", "unload"])
def test_merge_and_unload_leaves_no_prac(make_llama, order, how):
    """PEFT's own merge of the same adapters, and no PRAC module or state in the model it returns."""
    base, x = make_llama(), torch.randint(0, 128, (2, 16))
    model = peft_model(base, LLAMA_TARGETS, PRACConfig(), order)
    ref = peft_model(base, LLAMA_TARGETS)
    optimizers = [torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1) for m in (model, ref)]
    hook_optimizer(optimizers[0], model)  # "before": the first prac_dist call that sees the PeftModel
    for m, optimizer in zip((model, ref), optimizers):  # one step of training; PRAC's dA differs slightly
        loss_and_grads(m, x)
        optimizer.step()
    with torch.no_grad():  # make the reference's adapters PRAC's trained ones: the merge is what is compared
        for (name, p), (ref_name, q) in zip(model.named_parameters(), ref.named_parameters()):
            assert name == ref_name
            q.copy_(p)
    tuner = model.base_model
    merged = getattr(model, how)()
    assert_no_prac(merged)
    assert not any(k in vars(tuner) for k in ("merge_and_unload", "unload"))  # the guard went with PRAC
    want = getattr(ref, how)()
    assert {k: v for k, v in merged.state_dict().items()}.keys() == want.state_dict().keys()
    for name, value in want.state_dict().items():
        torch.testing.assert_close(merged.state_dict()[name], value, rtol=0, atol=0)  # same adds, same order
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=x).logits, want(input_ids=x).logits, rtol=0, atol=0)


def test_merge_without_any_prac_call_after_peft(make_gpt2):
    """apply_prac after get_peft_model installs the guard itself: no forward or other call needed."""
    base, x = make_gpt2(), torch.randint(0, 128, (2, 16))
    merged = peft_model(base, ["c_attn", "c_fc"], PRACConfig()).merge_and_unload()
    assert_no_prac(merged)
    want = peft_model(base, ["c_attn", "c_fc"]).merge_and_unload()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=x).logits, want(input_ids=x).logits, rtol=0, atol=0)


@pytest.mark.parametrize("order", ["after", "before"])
def test_remove_prac_gives_back_the_plain_peft_model(make_llama, order):
    """"before": PEFT wrapped the linears inside PRAC's MLP module; the original MLP gets those LoRA layers."""
    base = make_llama()
    model = peft_model(base, LLAMA_TARGETS, PRACConfig(), order)
    remove_prac(model)
    assert not is_prac_model(model)
    assert not any(type(m).__module__.startswith("prac_dist") for m in model.modules())
    assert not any("forward" in vars(m) for m in model.modules())
    x = torch.randint(0, 128, (2, 16))
    assert_same_grads(loss_and_grads(model, x)[1], loss_and_grads(peft_model(base, LLAMA_TARGETS), x)[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_saved_bytes_of_lora_layers(make_llama, dtype):
    """Bytes are counted, not timed: PRAC's Z replaces the X each LoRA A matrix saves.

    bf16: PEFT keeps float32 adapters and casts X for each of them (a float32 copy per layer);
    PRAC takes the one shared Z from the uncast X (benchmarks/results/peft_memory.json: 0.413x at the 130M shape).
    """
    base = make_llama(hidden=128, ffn=352, layers=2).to(dtype)
    x = torch.randint(0, 128, (4, 64))

    def saved(model):
        layers = model.base_model.model.model.layers
        return measure_saved_bytes(lambda: model(input_ids=x, labels=x), model, scope=layers).total_bytes

    plain = saved(peft_model(base, LLAMA_TARGETS))
    linear_only = saved(peft_model(base, LLAMA_TARGETS, PRACConfig(compress_nonlinear=False)))
    defaults = saved(peft_model(base, LLAMA_TARGETS, PRACConfig()))
    assert linear_only < 0.8 * plain, (linear_only, plain)
    assert defaults < 0.6 * plain, (defaults, plain)
