"""benchmarks/compute/compute.py at a toy shape: its counts are exact where the arithmetic is, and it runs end to end."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[2]

from benchmarks.compute import compute
from prac_dist.models.shapes import PRESETS  # noqa: E402

B, S = 2, 32
TINY = dataclasses.replace(PRESETS["llama_130m"], hidden=64, ffn=160, heads=4, vocab=512, layers=2)


def _rotary_flops() -> int:
    """FLOPs of the model's rotary-embedding table for one forward (outside the decoder layers)."""
    model = compute.build_model(TINY, dtype=torch.float32)
    x = torch.zeros(B, S, TINY.hidden)
    with FlopCounterMode(display=False) as fc:
        model.model.rotary_emb(x, torch.arange(S)[None])  # HF's default position_ids: one row
    return fc.get_total_flops()


def _linear_params(shape):
    d, f = shape.hidden, shape.ffn
    return 4 * d * d + 3 * d * f  # q, k, v, o (plain multi-head) and gate, up, down


def test_decompositions_and_cpu_attention_are_counted():
    q = torch.randn(2, 4, 32, 16, requires_grad=True)
    with FlopCounterMode(display=False, custom_mapping=compute.decomposition_flops()) as fc:
        torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True).sum().backward()
        torch.linalg.qr(torch.randn(10, 4))
        torch.linalg.eigh(torch.randn(5, 5))
    counts = {str(k).split(".")[-1]: v for k, v in fc.get_flop_counts()["Global"].items()}
    assert counts["linalg_qr"] == 2 * 10 * 4 * 4  # 2mn²
    assert counts["_linalg_eigh"] == 9 * 5 ** 3
    assert counts["_scaled_dot_product_flash_attention_for_cpu"] == 4 * 2 * 4 * 32 * 32 * 16  # QKᵀ and PV
    assert counts["_scaled_dot_product_flash_attention_for_cpu_backward"] == 10 * 2 * 4 * 32 * 32 * 16


def test_baseline_and_full_checkpointing_flops_are_the_matmul_arithmetic():
    n, d = B * S, TINY.hidden
    forward = TINY.layers * (2 * n * _linear_params(TINY) + 4 * B * S * S * d)
    backward = TINY.layers * (4 * n * _linear_params(TINY) + 10 * B * S * S * d)
    base = compute.count_flops(TINY, {}, B, S)
    assert base["decoder"] == forward + backward
    # lm_head forward, dX, dW, and the rotary table where transformers builds it with a matmul (5.17 does).
    assert base["head"] == 6 * n * d * TINY.vocab + _rotary_flops()
    assert base["refresh"] == 0
    full = compute.count_flops(TINY, {"ckpt": "full"}, B, S)
    # One more forward of every layer, less down_proj's: torch's non-reentrant checkpoint stops the
    # recompute once the last tensor backward needs (down_proj's input) is rebuilt.
    assert full["decoder"] == base["decoder"] + forward - TINY.layers * 2 * n * TINY.ffn * d
    sel = compute.count_flops(TINY, {"ckpt": "selective"}, B, S)
    assert sel["decoder"] == base["decoder"]  # matmul and attention outputs kept: no matmul recomputed


def test_bytes_split_and_checkpointing_keeps_layer_inputs():
    base = compute.count_bytes(TINY, {}, B, S)
    full = compute.count_bytes(TINY, {"ckpt": "full"}, B, S)
    sel = compute.count_bytes(TINY, {"ckpt": "selective"}, B, S)
    assert full["decoder"] == TINY.layers * B * S * TINY.hidden * 2  # each layer's bf16 input, nothing else
    assert full["head"] == base["head"]
    assert full["decoder"] < sel["decoder"] < base["decoder"]
    fused = compute.count_bytes(TINY, {"fused_loss": True}, B, S)
    assert fused["decoder"] == base["decoder"] and fused["head"] < base["head"]


def test_prac_refresh_is_counted_apart_from_the_steady_step():
    lean = compute.settings()["PRAC lean (compress_nonlinear=False)"]
    flops = compute.count_flops(TINY, lean, B, S)
    assert flops["refresh"] > 0 and flops["refresh_interval"] == lean["prac"].principal_update_interval
    nbytes = compute.count_bytes(TINY, lean, B, S)
    assert nbytes["decoder"] < compute.count_bytes(TINY, {}, B, S)["decoder"]


def test_script_end_to_end(tmp_path):
    out, png = tmp_path / "compute.json", tmp_path / "compute.png"
    rc = compute.main(["--hidden", "64", "--ffn", "160", "--heads", "4", "--vocab", "512", "--seq", "32",
                       "--flop-batch", "2", "--byte-batch", "2", "--time-batch", "1", "--out", str(out),
                       "--png", str(png)])
    assert rc == 0 and png.stat().st_size > 0
    res = json.loads(out.read_text())
    rows = {r["setting"]: r for r in res["results"]["llama_130m"]["rows"]}
    assert set(rows) == set(compute.settings())
    assert rows["baseline"]["decoder_flop_ratio"] == 1.0 and rows["baseline"]["time_ratio"] == 1.0
    for r in rows.values():
        assert r["step_seconds"] > 0 and r["decoder_bytes_ratio"] > 0


def test_rejects_fewer_than_five_timed_steps():
    with pytest.raises(SystemExit):
        compute.main(["--time-steps", "3"])


def test_settings_filter_keeps_the_baseline_and_rejects_unknown_names(tmp_path):
    out = tmp_path / "compute.json"
    rc = compute.main(["--hidden", "64", "--ffn", "160", "--heads", "4", "--vocab", "512", "--seq", "32",
                       "--flop-batch", "2", "--byte-batch", "2", "--skip-time", "--settings", "PRACConfig()",
                       "--out", str(out), "--png", str(tmp_path / "c.png")])
    assert rc == 0
    rows = json.loads(out.read_text())["results"]["llama_130m"]["rows"]
    assert [r["setting"] for r in rows] == ["baseline", "PRACConfig()"]
    with pytest.raises(SystemExit, match="'nope'"):
        compute.main(["--settings", "nope", "--skip-time"])
