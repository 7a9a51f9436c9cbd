"""Shared fixtures: tiny Hugging Face models that build in milliseconds on CPU."""

import os
import re

import pytest
import torch

# Two CI cores: one intra-op thread per process keeps multi-rank tests from oversubscribing.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# In CI a skip must mean "needs a GPU": anything else (a missing package, launcher or tool) is an install
# step that stopped working, and CI must go red instead of skipping it.
_IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
_GPU_REASON = re.compile(r"\b(GPU|CUDA)\b")


def _fail_non_gpu_skip(report) -> None:
    if not (_IN_CI and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if not _GPU_REASON.search(reason):
        report.outcome = "failed"
        report.longrepr = (f"skipped in CI ({reason}): in CI only tests that need a GPU may skip; "
                           f"install what is missing (.ci/install)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_non_gpu_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_non_gpu_skip(outcome.get_result())


def _quiet_transformers():
    from transformers.utils import logging

    logging.set_verbosity_error()


@pytest.fixture
def make_llama():
    _quiet_transformers()
    from transformers import LlamaConfig, LlamaForCausalLM

    def make(hidden=64, ffn=160, layers=2, heads=4, vocab=128, seed=0, model_type="llama", **kw):
        torch.manual_seed(seed)
        if model_type == "mistral":
            from transformers import MistralConfig as C, MistralForCausalLM as M
        elif model_type == "qwen2":
            from transformers import Qwen2Config as C, Qwen2ForCausalLM as M
        else:
            C, M = LlamaConfig, LlamaForCausalLM
        cfg = C(hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=heads, vocab_size=vocab, attn_implementation="sdpa", **kw)
        return M(cfg)

    return make


@pytest.fixture
def make_gpt2():
    _quiet_transformers()
    from transformers import GPT2Config, GPT2LMHeadModel

    def make(hidden=64, layers=2, heads=4, vocab=128, seed=0):
        torch.manual_seed(seed)
        cfg = GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, vocab_size=vocab, resid_pdrop=0.0,
                         attn_pdrop=0.0, embd_pdrop=0.0, bos_token_id=0, eos_token_id=0,
                         attn_implementation="sdpa")
        return GPT2LMHeadModel(cfg)

    return make
