"""The planner's saved-bytes formula against measure_saved_bytes on tiny LLaMA and GPT-2 models.

The full-shape check (LLaMA-60M/130M, GPT-2 124M) is benchmarks/memory/planner_accuracy.py; here its own
cases (baseline with HF's and the fused head in each backward mode, PRACConfig(), lean(), paper(),
paper 8-bit, 16-bit Z, fused_loss False/'store'/'recompute'), measured by its own function, must hold
on shapes small enough for CI. The prediction is a formula of the shape, so it must match at any size,
to the byte. One known CPU difference is accounted for exactly: CPU LayerNorm (GPT-2) keeps its mean and
rstd in the model dtype, the formula counts the float32 that CUDA keeps (2 x (4 - b) bytes per row).
"""

import dataclasses

import pytest
import torch

from prac_dist import PRACConfig, apply_prac, remove_prac
from prac_dist.models import PRESETS, build_model
from prac_dist.planner import Setting, saved_bytes
from prac_dist.planner.activations import head_backward

from benchmarks.memory import planner_accuracy as bench

TINY = {
    "llama": dataclasses.replace(PRESETS["llama_60m"], hidden=64, layers=2, heads=4, ffn=176, vocab=1000),
    "llama_gqa": dataclasses.replace(PRESETS["llama_60m"], hidden=64, layers=2, heads=4, kv_heads=2, ffn=176,
                                     vocab=1000),
    "gpt2": dataclasses.replace(PRESETS["gpt2_124m"], hidden=64, layers=2, heads=4, ffn=256, vocab=1000,
                                max_positions=64),
}
CASES = dict(bench.CASES)


def _cpu_layernorm_stats(shape, setting, tokens: int, b: int, checkpointed: int = 0) -> int:
    """Bytes the formula's float32 LayerNorm statistics exceed CPU's model-dtype ones by (HF's LayerNorm only:
    PRAC's compressed norms keep float32 statistics on every device)."""
    if shape.family != "gpt2" or (setting.prac and setting.prac.compress_nonlinear):
        return 0
    norms = 2 * (shape.layers - checkpointed) + 1  # two per block that is not checkpointed, the final one
    return tokens * norms * 2 * (4 - b)


def _check(family, dtype, batch, seq, names):
    torch.manual_seed(0)
    shape = TINY[family]
    model = build_model(shape, dtype=dtype)
    x = torch.randint(0, shape.vocab, (batch, seq))
    b = 2 if dtype == torch.bfloat16 else 4
    for name in names:
        got = bench.measure(model, CASES[name], x)
        want = bench.predict(shape, CASES[name], batch, seq, b)
        assert want - _cpu_layernorm_stats(shape, bench.setting_of(CASES[name]), batch * seq, b) == got, \
            f"{family} {dtype} {name}: predicted {want}, measured {got}"


@pytest.mark.parametrize("family", sorted(TINY))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_predicted_saved_bytes_match_measured(family, dtype):
    # 96 tokens: past store_fits' threshold (about 68 at d 64, V 1000), so 'auto' stores here.
    shape, b = TINY[family], 2 if dtype == torch.bfloat16 else 4
    assert head_backward(shape, Setting(fused_loss=True), 96, b) == "store"
    _check(family, dtype, 2, 48, list(CASES))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_auto_head_below_the_store_threshold_matches_measured(family):
    # 48 tokens: 'auto' recomputes, and the prediction follows it. One row: the saved labels keep the
    # padded row's storage (8 bytes more than at 2 rows).
    assert head_backward(TINY[family], Setting(fused_loss=True), 48, 2) == "recompute"
    _check(family, torch.bfloat16, 1, 48, ["baseline", "fused loss (auto)", "fused loss store", "PRACConfig()"])


def test_store_mode_holds_the_float32_dw_whatever_the_batch():
    # The dW buffer (4·V·d) does not grow with the batch; the rest of the fused head (dX) does.
    shape = TINY["llama"]
    s = Setting.from_config(PRACConfig(fused_loss="store"))
    one, two = saved_bytes(shape, s, 1, 48, 2), saved_bytes(shape, s, 2, 48, 2)
    assert one["head_buffers"] == two["head_buffers"] == 4 * shape.vocab * shape.hidden
    assert two["head"] == 2 * one["head"] == 2 * 48 * 2 * shape.hidden


def test_setting_from_config_keeps_the_config():
    assert Setting.from_config(PRACConfig()) == Setting(prac=PRACConfig())
    assert Setting.from_config(PRACConfig()).fused_loss_backward == PRACConfig().fused_loss_backward
    assert Setting.from_config(PRACConfig.paper()).prac_config_dict() == {
        k: v for k, v in PRACConfig.paper().to_dict().items() if PRACConfig().to_dict()[k] != v}
    with pytest.raises(ValueError, match="target_modules"):
        Setting.from_config(PRACConfig(target_modules=("q_proj",)))
    with pytest.raises(ValueError, match="fused_loss"):
        Setting(prac=PRACConfig(), fused_loss="store")  # the head is the config's


def test_saved_bytes_scale_linearly_with_batch():
    shape = PRESETS["llama_130m"]
    s = Setting(prac=PRACConfig(fused_loss="recompute"))  # 'store' holds a batch-independent dW (test above)
    one = saved_bytes(shape, s, 1, 256, 2)
    four = saved_bytes(shape, s, 4, 256, 2)
    for key in one:
        if key != "constant":
            assert four[key] == 4 * one[key], key
    assert four["constant"] == one["constant"] - 8  # a single row's labels keep their padded storage


def test_checkpointed_layers_keep_only_their_input():
    shape = PRESETS["llama_130m"]
    full = saved_bytes(shape, Setting(), 1, 256, 2)
    all_ckpt = saved_bytes(shape, Setting(checkpoint_every=1), 1, 256, 2)
    assert all_ckpt["checkpointed_inputs"] == 12 * 256 * 768 * 2
    assert all(all_ckpt[k] == 0 for k in all_ckpt if k.startswith("layers."))
    half = saved_bytes(shape, Setting(checkpoint_every=2), 1, 256, 2)
    assert half["checkpointed_inputs"] == 6 * 256 * 768 * 2
    assert sum(half[k] for k in half if k.startswith("layers.")) * 2 == sum(
        full[k] for k in full if k.startswith("layers."))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_all_layers_checkpointed_match_measured(family):
    # HF's own activation checkpointing of every decoder layer (checkpoint_every=1).
    torch.manual_seed(0)
    shape = TINY[family]
    model = build_model(shape, dtype=torch.bfloat16)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    x = torch.randint(0, shape.vocab, (2, 24))
    for name in ("baseline", "PRACConfig()"):
        case = CASES[name]
        s = dataclasses.replace(bench.setting_of(case), checkpoint_every=1)
        got = bench.measure(model, case, x)
        want = sum(saved_bytes(shape, s, 2, 24, 2).values())
        assert want - _cpu_layernorm_stats(shape, s, 48, 2, checkpointed=shape.layers) == got, \
            f"{family} {name}: predicted {want}, measured {got}"
