"""Saved bytes of an HF LLaMA decoder with the LLaMA-130M layer shape (hidden 768, ffn 2048, 12 heads,
vocab 32000, sdpa, bf16, batch 4 x 256), counted by prac_dist.memory's saved-tensor hook.

Bytes per decoder layer do not depend on depth, so one layer gives the same ratios as twelve
(benchmarks/memory.py measures the full 12-layer model: same ratios to 3 decimals).
"""

import copy

import pytest
import torch

from prac_dist import PRACConfig, apply_prac
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
