"""Saved bytes of an HF LLaMA decoder with the LLaMA-130M layer shape (hidden 768, ffn 2048, 12 heads,
vocab 32000, sdpa, bf16, batch 4 x 256), counted by prac_dist.memory's saved-tensor hook.

Bytes per decoder layer do not depend on depth, so one layer gives the same ratios as twelve
(benchmarks/memory/memory.py measures the full 12-layer model: same ratios to 3 decimals).
"""

import copy
import gc
import weakref

import pytest
import torch

from prac_dist import PRACConfig, apply_prac, step
from prac_dist.core.subspace import Compressor
from prac_dist.memory import measure_saved_bytes


@pytest.fixture(scope="module")
def llama_130m_layer():
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=768, intermediate_size=2048, num_hidden_layers=1, num_attention_heads=12,
                      num_key_value_heads=12, vocab_size=32000, attn_implementation="sdpa")
    return LlamaForCausalLM(cfg).to(torch.bfloat16)


def _decoder_bytes(model, x):
    report = measure_saved_bytes(lambda: model(input_ids=x).logits, model, scope=list(model.model.layers))
    return report.total_bytes


@pytest.mark.slow  # bf16 LLaMA-130M layer + 32k logits on CPU: 30-160 s
@pytest.mark.parametrize("nonlinear, bound", [(False, 0.65), (True, 0.50)])
def test_decoder_saved_bytes_ratio(llama_130m_layer, nonlinear, bound):
    x = torch.randint(0, 32000, (4, 256))
    base = _decoder_bytes(llama_130m_layer, x)
    model = apply_prac(copy.deepcopy(llama_130m_layer), PRACConfig(compress_nonlinear=nonlinear, fused_loss=False))
    ratio = _decoder_bytes(model, x) / base
    assert ratio <= bound, ratio


def test_accounting_counts_shared_storage_once_and_skips_parameters():
    w = torch.nn.Parameter(torch.randn(8, 8))
    model = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8, requires_grad=True)

    def run():
        y = x * 2  # saves nothing batch-sized (scalar other)
        a = y.sin()  # saves y: 4*8*4 bytes
        b = y.cos()  # saves y again: same storage, counted once
        return (a + b) @ w  # saves (a+b) and the parameter w (skipped)

    report = measure_saved_bytes(run, torch.nn.ModuleDict({"m": model, "w": torch.nn.Linear(1, 1)}))
    assert report.total_bytes == 2 * 4 * 8 * 4


def test_no_stored_z_outlives_its_backward(make_llama):
    """The stored forms ride on the linears' input tensors (Compressor.compress_shared), not on prac_dist
    objects: once backward has run and the graph is gone, every Z and int8 code is freed."""
    model = apply_prac(make_llama(hidden=32, ffn=64, layers=2, heads=2, vocab=64), PRACConfig(kernel="torch"))
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1))
    saved = []

    def pack(t):
        if t.dtype == torch.int8:
            saved.append(weakref.ref(t))
        return t

    for _ in range(2):
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        del loss
        step(model)
    gc.collect()
    # Per step and layer: q/k/v's codes (saved by each of the 3), gate/up's (by 2), down_proj's, the two norms'
    # and SwiGLU's two inputs: 10; plus the final norm's. Two steps.
    assert len(saved) == 2 * (2 * 10 + 1)
    assert all(ref() is None for ref in saved)


def test_siblings_share_one_stored_form_per_input_and_step():
    """compress_shared: the linears reading one x (q/k/v) get one stored form; another x, a step() or a
    refresh gives a new one (a Z of the old basis must never meet the new one in backward)."""
    x = torch.randn(8, 16)
    comp = Compressor("g", 16, 4, 4, seed=0, per_rank_random=False, storage_bits=8, kernel="torch")
    comp.refresh(x)
    first = comp.compress_shared(x, x)
    assert comp.compress_shared(x, x) is first and int(comp.roundings) == 1
    other = x.clone()
    assert comp.compress_shared(other, other) is not first and int(comp.roundings) == 2
    assert comp.compress_shared(x, x) is first  # x still carries its own
    comp.mark(1)  # a step, no refresh due (T = 500)
    after_step = comp.compress_shared(x, x)
    assert after_step is not first and int(comp.roundings) == 3
    back = comp.q_back(x.device)
    comp.mark(500)  # a refresh due
    comp.refresh(x)
    assert comp.q_back(x.device) is not back and comp.compress_shared(x, x) is not after_step
