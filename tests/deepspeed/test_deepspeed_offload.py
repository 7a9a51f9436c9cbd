"""Compressed activation offload (one process, CPU): identical gradients, only compressed tensors move,
and the traffic is (r1 + r2)/n of the full activations."""

import pytest
import torch

import prac_dist
from prac_dist.deepspeed import CompressedActivationOffload, OffloadConfig

LINEAR_ONLY = dict(compress_nonlinear=False, fused_loss=False, linear_storage="project", storage_bits=16)


def _grads(model, x):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # int8 stochastic rounding draws from torch's generator: the same draws each run
    loss = model(input_ids=x, labels=x).loss
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _patched(make_llama, **cfg):
    return prac_dist.apply_prac(make_llama(hidden=64, ffn=160, vocab=128), prac_dist.PRACConfig(**cfg))


@pytest.mark.parametrize("cfg", [{}, dict(storage_bits=8), LINEAR_ONLY], ids=["defaults", "int8", "linear-only"])
def test_offload_gives_identical_gradients(make_llama, cfg):
    x = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(0))
    ref_loss, ref = _grads(_patched(make_llama, **cfg), x)
    model = _patched(make_llama, **cfg)
    offload = CompressedActivationOffload(OffloadConfig(device="cpu", min_bytes=0)).attach(model)
    loss, got = _grads(model, x)
    assert loss == ref_loss
    assert got.keys() == ref.keys()
    for name in ref:
        assert torch.equal(got[name], ref[name]), name  # a copy is exact: bit-identical gradients
    assert offload.stats["tensors"] > 0 and offload.stats["d2h_bytes"] == offload.stats["h2d_bytes"]


def test_only_compressed_tensors_move(make_llama):
    from prac_dist.core.storage import is_compressed_activation

    model = _patched(make_llama)
    x = torch.randint(0, 128, (2, 24))
    compressed, params = {}, 0

    def pack(t):
        nonlocal params
        params += isinstance(t, torch.nn.Parameter)
        if is_compressed_activation(t):
            compressed[id(t)] = t.numel() * t.element_size()  # shared q/k/v Z counted once
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=x, labels=x).loss
    offload = CompressedActivationOffload(OffloadConfig(device="cpu", min_bytes=0)).attach(model)
    model(input_ids=x, labels=x).loss.backward()
    assert params > 0  # Parameters do reach the pack hook, and are left alone
    assert offload.stats["tensors"] == len(compressed)
    assert offload.stats["d2h_bytes"] == sum(compressed.values())


def test_small_tensors_stay_and_hooks_end_with_forward(make_llama):
    model = _patched(make_llama)
    offload = CompressedActivationOffload(OffloadConfig(device="cpu", min_bytes=1 << 30)).attach(model)
    x = torch.randint(0, 128, (2, 24))
    model(input_ids=x, labels=x).loss.backward()
    assert offload.stats["tensors"] == 0 and offload.stats["skipped_small"] > 0
    # Outside the model's forward nothing is intercepted: a compressed-marked tensor saved here stays put.
    offload.config = OffloadConfig(device="cpu", min_bytes=0)
    offload.reset_stats()
    t = torch.ones(4, 4, requires_grad=True)
    z = torch.ones(4, 4)
    z._prac_compressed = True
    (t * z).sum().backward()
    assert offload.stats["tensors"] == 0
    with torch.no_grad():  # an eval forward saves nothing and moves nothing
        model(input_ids=x)
    assert offload.stats["tensors"] == 0
    offload.detach()
    model(input_ids=x, labels=x).loss.backward()
    assert offload.stats["tensors"] == 0


def test_host_traffic_is_rank_over_width_of_the_full_activations(make_llama):
    """Linear layers only: bytes moved at the default 0.3/0.3 over bytes moved at full rank (Z = X's size)
    is exactly sum(r1 + r2) / sum(n) over the compressed groups (floors included)."""
    x = torch.randint(0, 128, (2, 24))
    moved = {}
    for name, ratios in (("default", (0.3, 0.3)), ("full", (0.5, 0.5))):
        model = _patched(make_llama, principal_ratio=ratios[0], random_ratio=ratios[1], **LINEAR_ONLY)
        offload = CompressedActivationOffload(OffloadConfig(device="cpu", min_bytes=0)).attach(model)
        model(input_ids=x, labels=x).loss.backward()
        moved[name] = offload.stats["d2h_bytes"]
        widths = [c["n"] for c in prac_dist.prac_state_dict(model)["compressors"].values()]
    cfg = prac_dist.PRACConfig(**LINEAR_ONLY)
    expected = sum(sum(cfg.ranks(n)) for n in widths) / sum(widths)
    assert moved["default"] / moved["full"] == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.6, abs=0.02)  # floor(0.3 n) twice, n = 64 or 160


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the asynchronous path (pinned buffers, side stream) needs CUDA")
def test_async_gpu_offload_gives_identical_gradients(make_llama):
    x = torch.randint(0, 128, (4, 64), device="cuda")
    ref_loss, ref = _grads(_patched(make_llama).cuda(), x)
    model = _patched(make_llama).cuda()
    offload = CompressedActivationOffload(OffloadConfig(device="cpu", pin_memory=True, min_bytes=0)).attach(model)
    loss, got = _grads(model, x)
    assert loss == ref_loss
    for name in ref:
        assert torch.equal(got[name], ref[name]), name
    assert offload.stats["tensors"] > 0
