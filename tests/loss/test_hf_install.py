"""install_fused_loss on tiny HF causal LMs: same loss and gradients as the unpatched model, logits not saved."""

import pytest
import torch
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

from prac_dist.loss import install_fused_loss, is_fused_loss_installed, uninstall_fused_loss

VOCAB = 512
_COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64)


def _llama(**kw):
    return LlamaForCausalLM(LlamaConfig(**{**_COMMON, **kw}))


def _gpt2():
    # Dropout off so two forwards are comparable; the head is tied to wte.
    return GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                      bos_token_id=0, eos_token_id=0))


MODELS = {
    "llama": _llama,
    "llama_tied": lambda: _llama(tie_word_embeddings=True),
    "mistral": lambda: MistralForCausalLM(MistralConfig(**_COMMON)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**_COMMON)),
    "gpt2": _gpt2,
}


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, VOCAB, (2, 24), generator=g)
    labels = x.clone()
    labels[0, :7] = -100  # a masked prompt
    return x, labels


def _loss_and_grads(model, **kwargs):
    model.zero_grad(set_to_none=True)
    out = model(**kwargs)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_loss_and_every_gradient_equal_unpatched(name):
    torch.manual_seed(0)
    model = MODELS[name]()
    x, labels = _batch()
    ref, ref_g = _loss_and_grads(model, input_ids=x, labels=labels)
    assert install_fused_loss(model) and is_fused_loss_installed(model)
    out, out_g = _loss_and_grads(model, input_ids=x, labels=labels)
    assert out.logits is None  # documented: a fused call computes no logits
    torch.testing.assert_close(out.loss, ref.loss, rtol=2e-6, atol=2e-6)
    assert out_g.keys() == ref_g.keys()
    for n in ref_g:  # float32 rounding (head gradient reordered over chunks)
        torch.testing.assert_close(out_g[n], ref_g[n], rtol=1e-5, atol=1e-6, msg=n)


def test_tied_head_gradient_reaches_the_shared_embedding():
    torch.manual_seed(0)
    model = _gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    x, labels = _batch()
    _, ref_g = _loss_and_grads(model, input_ids=x, labels=labels)
    install_fused_loss(model, chunk_size=7)
    _, out_g = _loss_and_grads(model, input_ids=x, labels=labels)
    # wte.weight's gradient is the embedding gradient plus the head gradient: both must be there.
    torch.testing.assert_close(out_g["transformer.wte.weight"], ref_g["transformer.wte.weight"],
                               rtol=1e-5, atol=1e-6)


def test_no_labels_and_no_grad_behave_exactly_as_before():
    torch.manual_seed(0)
    model = _llama()
    x, labels = _batch()
    plain = model(input_ids=x).logits
    with torch.no_grad():
        plain_eval = model(input_ids=x, labels=labels)
    install_fused_loss(model)
    assert torch.equal(model(input_ids=x).logits, plain)
    with torch.no_grad():  # evaluation keeps the logits (HF Trainer computes metrics from them)
        out = model(input_ids=x, labels=labels)
    assert torch.equal(out.logits, plain_eval.logits) and torch.equal(out.loss, plain_eval.loss)


def test_num_items_in_batch_shift_labels_and_tuple_output():
    torch.manual_seed(0)
    model = _llama()
    x, labels = _batch()
    shift = torch.roll(labels, -1, dims=1)
    shift[:, -1] = -100
    cases = [dict(labels=labels, num_items_in_batch=torch.tensor(40)),
             dict(labels=labels, shift_labels=shift),
             dict(labels=labels, num_items_in_batch=40)]
    refs = [model(input_ids=x, **c).loss for c in cases]
    ref_tuple = model(input_ids=x, labels=labels, return_dict=False)
    install_fused_loss(model)
    for c, ref in zip(cases, refs):
        torch.testing.assert_close(model(input_ids=x, **c).loss, ref, rtol=2e-6, atol=2e-6)
    out = model(input_ids=x, labels=labels, return_dict=False)
    # HF tuples leave out None fields: (loss, past_key_values...) without the logits.
    assert len(out) == len(ref_tuple) - 1
    torch.testing.assert_close(out[0], ref_tuple[0], rtol=2e-6, atol=2e-6)


def test_positional_labels_on_gpt2():
    torch.manual_seed(0)
    model = _gpt2()
    x, labels = _batch()
    ref = model(input_ids=x, labels=labels).loss
    install_fused_loss(model)
    # labels is GPT2LMHeadModel.forward's 10th positional parameter: the pre-hook binds it by signature.
    import inspect
    params = list(inspect.signature(type(model).forward).parameters)[1:]
    args = [None] * params.index("labels") + [labels]
    args[params.index("input_ids")] = x
    out = model(*args)
    assert out.logits is None
    torch.testing.assert_close(out.loss, ref, rtol=2e-6, atol=2e-6)


def test_saved_bytes_of_the_head_drop():
    # Counted with our own saved-tensor hook: the standard head keeps N x V float32 (log-softmax),
    # the fused one keeps N x d hidden + N labels + N logsumexp.
    torch.manual_seed(0)
    model = _llama()
    x, labels = _batch()
    n = x.numel()

    def saved_bytes():
        seen, total = set(), 0

        def pack(t):
            nonlocal total
            if not isinstance(t, torch.nn.Parameter) and t.untyped_storage().data_ptr() not in seen:
                seen.add(t.untyped_storage().data_ptr())
                total += t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=x, labels=labels).loss.backward()
        return total

    before = saved_bytes()
    install_fused_loss(model)
    after = saved_bytes()
    # The drop is at least the float32 logits minus what the fused head keeps per row.
    assert before - after >= n * VOCAB * 4 - n * (8 + 4 + 8)


def test_uninstall_restores_everything():
    torch.manual_seed(0)
    model = _llama()
    x, labels = _batch()
    install_fused_loss(model)
    assert install_fused_loss(model)  # idempotent
    uninstall_fused_loss(model)
    uninstall_fused_loss(model)  # no-op
    assert not is_fused_loss_installed(model)
    assert "forward" not in vars(model.lm_head) and "_loss_function" not in vars(model)
    assert not model._forward_pre_hooks and not model._forward_hooks
    out = model(input_ids=x, labels=labels)
    assert out.logits is not None and out.logits.shape == (2, 24, VOCAB)


def test_not_applicable_returns_false():
    from transformers import BertConfig, BertForMaskedLM

    bert = BertForMaskedLM(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=64, vocab_size=100))
    assert install_fused_loss(bert) is False
    assert install_fused_loss(torch.nn.Linear(4, 4)) is False
    custom = _llama()
    custom.loss_function = lambda logits, labels, vocab_size, **kw: logits.sum()  # a user's own loss
    assert install_fused_loss(custom) is False
    with pytest.raises(ValueError, match="chunk_size=0"):
        install_fused_loss(_llama(), chunk_size=0)


@pytest.mark.parametrize("via", ["install_fused_loss", "PRACConfig"])
def test_backward_mode_reaches_the_installed_head(via):
    # Exact FLOP count of one training step: 'recompute' runs one more head matmul (2·N·d·V) than
    # 'store', everything else identical; same loss and gradients to float32 rounding.
    from torch.utils.flop_counter import FlopCounterMode

    from prac_dist import PRACConfig, apply_prac

    x, labels = _batch()
    flops, results = {}, {}
    for mode in ("store", "recompute"):
        torch.manual_seed(0)
        model = _llama()
        if via == "install_fused_loss":
            assert install_fused_loss(model, backward=mode)
        else:
            apply_prac(model, PRACConfig(fused_loss=mode))
        with FlopCounterMode(display=False) as counter:
            results[mode] = _loss_and_grads(model, input_ids=x, labels=labels)
        flops[mode] = counter.get_total_flops()
    assert flops["recompute"] - flops["store"] == 2 * x.numel() * _COMMON["hidden_size"] * VOCAB
    (out_s, g_s), (out_r, g_r) = results["store"], results["recompute"]
    torch.testing.assert_close(out_s.loss, out_r.loss, rtol=2e-6, atol=2e-6)
    for n in g_r:
        torch.testing.assert_close(g_s[n], g_r[n], rtol=1e-5, atol=1e-6, msg=n)


def test_unknown_backward_mode_is_an_error():
    with pytest.raises(ValueError, match=r"backward='stored'.*'auto', 'recompute', 'store'"):
        install_fused_loss(_llama(), backward="stored")
