"""plan(): model-state sharding, the pick rule, input validation, and the prac-plan CLI."""

import json

import pytest

from prac_dist.models import PRESETS, shape_from_config
from prac_dist.planner import Setting, plan
from prac_dist.planner.cli import main, parse_bytes
from prac_dist.planner.plan import _evaluate, _head_transient, _rank_key

GIB = 2**30


def test_parameter_count_of_presets():
    # LLaMA-130M/60M as in GaLore's configs (134M / 58M with untied 32000-vocab head); GPT-2 124M.
    assert PRESETS["llama_130m"].num_parameters() == 134_105_856
    assert PRESETS["llama_60m"].num_parameters() == 58_073_600
    assert PRESETS["gpt2_124m"].num_parameters() == 124_439_808


def test_model_states_follow_zero_sharding():
    p = PRESETS["llama_130m"].num_parameters()
    rows = {e: plan("llama_130m", 1, 256, e, 1 if e == "single" else 4, 10**12).baseline.components
            for e in ("single", "zero1", "zero2", "zero3", "fsdp2")}
    # bf16 mixed precision: 2 + 2 + 12 bytes per parameter (ZeRO paper's 16 psi).
    assert rows["single"]["params"] == 2 * p and rows["single"]["grads"] == 2 * p
    assert rows["single"]["optimizer"] == 12 * p
    assert rows["zero1"]["optimizer"] == 3 * p and rows["zero1"]["grads"] == 2 * p
    assert rows["zero2"]["grads"] == p // 2 and rows["zero2"]["params"] == 2 * p
    for e in ("zero3", "fsdp2"):
        assert rows[e]["params"] == p // 2 and rows[e]["grads"] == p // 2 and rows[e]["optimizer"] == 3 * p
    fp32 = plan("llama_130m", 1, 256, "single", 1, 10**12, dtype="float32").baseline.components
    assert fp32["params"] == 4 * p and fp32["optimizer"] == 8 * p  # no separate master copy


def test_pick_is_the_fastest_then_highest_ratio_that_fits():
    generous = plan("llama_130m", 8, 256, "single", 1, 80 * GIB)
    # Everything fits: exact (the fused loss's 'store' backward costs no extra FLOPs and saves bytes).
    assert not generous.pick.setting.prac and generous.pick.setting.checkpoint_every == 0
    assert generous.pick.compute_ratio == 1.0
    tight = plan("llama_130m", 128, 256, "zero2", 4, 10 * GIB)
    pick = tight.pick
    assert pick is not None and pick.fits and pick.peak_bytes <= 10 * GIB
    assert not tight.baseline.fits
    # Nothing that fits recomputes less, or (at equal recompute) has a better variance rank.
    assert all(_rank_key(pick) <= _rank_key(r) for r in tight.rows if r.fits)
    assert pick.setting.prac and pick.setting.checkpoint_every == 0
    hopeless = plan("llama_1b", 512, 2048, "single", 1, 8 * GIB)
    assert hopeless.pick is None
    assert "nothing fits" in hopeless.table()


def test_prac_and_fused_loss_lower_the_prediction():
    p = plan("llama_130m", 64, 256, "single", 1, 80 * GIB)
    by_label = {r.setting.label(): r for r in p.rows}
    base = by_label["baseline"].components["activations"]
    fused = by_label["baseline, fused loss"].components["activations"]
    prac = by_label["PRAC 0.3/0.3, nl int8, Z 8-bit, fused loss"].components["activations"]
    # 16,384 tokens: 'auto' stores. Per token the float32 log-softmax (4V) and HF's labels (8) go, dX
    # replaces the head's input; the float32 dW (4Vd) is held instead; the constant divisor grows 4 -> 8 bytes.
    assert base - fused == 64 * 256 * (4 * 32000 + 8) - 4 * 32000 * 768 - 4
    assert fused_row_is_store(p)
    assert prac < 0.4 * base


def fused_row_is_store(p) -> bool:
    row = next(r for r in p.rows if r.setting.label() == "baseline, fused loss")
    return row.activations["head_buffers"] == 4 * p.shape.vocab * p.shape.hidden


def test_fused_head_store_counts_its_dw_once():
    # 'store' holds the float32 dW from forward to backward: in the activations (head_buffers), so the
    # head's transient is only the chunk logits; 'recompute' allocates dW and dX in its backward.
    shape, n, b = PRESETS["llama_130m"], 64 * 256, 2
    store, recompute = (_evaluate(shape, Setting(fused_loss=m), 64, 256, "single", 1, b, 80 * GIB)
                        for m in ("store", "recompute"))
    dw, dx, chunk_logits = 4 * shape.vocab * shape.hidden, b * n * shape.hidden, 524 * shape.vocab * (4 + b)
    assert store.activations["head_buffers"] == dw and recompute.activations["head_buffers"] == 0
    # Saved: store keeps dX (b·d per token), recompute the input, labels and logsumexp (b·d + 12).
    assert store.activations["head"] == dx and recompute.activations["head"] == dx + 12 * n
    assert _head_transient(shape, Setting(fused_loss="store"), n, b) == chunk_logits
    assert _head_transient(shape, Setting(fused_loss="recompute"), n, b) == chunk_logits + dw + dx


def test_setting_rejects_an_unknown_fused_loss():
    with pytest.raises(ValueError, match="fused_loss='sotre'.*'store'"):
        Setting(fused_loss="sotre")


def test_config_input_matches_preset():
    cfg = {"model_type": "llama", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
           "intermediate_size": 2048, "vocab_size": 32000, "num_key_value_heads": 12,
           "max_position_embeddings": 2048}
    assert shape_from_config(cfg) == PRESETS["llama_130m"]
    a = plan(cfg, 4, 256, "zero3", 2, 24 * GIB)
    b = plan("llama_130m", 4, 256, "zero3", 2, 24 * GIB)
    assert [r.peak_bytes for r in a.rows] == [r.peak_bytes for r in b.rows]


@pytest.mark.parametrize("kwargs,field", [
    (dict(model="llama_70b"), "model='llama_70b'"),
    (dict(micro_batch=0), "micro_batch=0"),
    (dict(seq_len=2.5), "seq_len=2.5"),
    (dict(engine="zero4"), "engine='zero4'"),
    (dict(world_size=0), "world_size=0"),
    (dict(world_size=2), "world_size=2 with engine='single'"),
    (dict(memory_budget_bytes=-1), "memory_budget_bytes=-1"),
    (dict(dtype="int8"), "dtype='int8'"),
    (dict(model={"model_type": "bert"}), "model_type='bert'"),
])
def test_bad_input_names_the_field(kwargs, field):
    args = dict(model="llama_130m", micro_batch=1, seq_len=256, engine="single", world_size=1,
                memory_budget_bytes=GIB, dtype="bfloat16")
    args.update(kwargs)
    with pytest.raises(ValueError) as err:
        plan(**args)
    assert field in str(err.value)


def test_parse_bytes():
    assert parse_bytes("24GiB") == 24 * GIB
    assert parse_bytes("80GB") == 80 * 10**9
    assert parse_bytes("1.5 TiB") == int(1.5 * 2**40)
    assert parse_bytes("1048576") == 2**20
    for bad in ("24 parsecs", "", "GiB", "0"):
        with pytest.raises(ValueError, match="--budget"):
            parse_bytes(bad)


def test_cli_prints_table_and_pick(capsys, tmp_path):
    out_json = tmp_path / "plan.json"
    rc = main(["--model", "llama_130m", "--micro-batch", "128", "--seq-len", "256", "--engine", "zero2",
               "--world-size", "4", "--budget", "24GiB", "--json", str(out_json)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "baseline" in text and "pick:" in text and "<- pick" in text
    data = json.loads(out_json.read_text())
    assert data["pick"]["peak_bytes"] <= 24 * GIB and data["engine"] == "zero2"


@pytest.mark.parametrize("argv,field", [
    (["--model", "nope"], "--model"),
    (["--micro-batch", "0"], "--micro-batch=0"),
    (["--micro-batch", "x"], "--micro-batch"),
    (["--engine", "zero4"], "--engine"),
    (["--budget", "lots"], "--budget"),
    (["--world-size", "0"], "--world-size=0"),
])
def test_cli_bad_input_exits_2_naming_the_field(argv, field, capsys):
    base = {"--model": "llama_130m", "--micro-batch": "4", "--seq-len": "256", "--engine": "zero2",
            "--world-size": "2", "--budget": "24GiB"}
    base.update(dict(zip(argv[::2], argv[1::2])))
    args = [t for kv in base.items() for t in kv]
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(args))
    assert exc.value.code == 2
    assert field in capsys.readouterr().err


def test_cli_nothing_fits_exits_1(capsys):
    assert main(["--model", "llama_1b", "--micro-batch", "512", "--seq-len", "2048", "--budget", "8GiB"]) == 1
    assert "nothing fits" in capsys.readouterr().out


def test_setting_labels_are_unique():
    from prac_dist.planner.plan import candidate_settings

    labels = [s.label() for s in candidate_settings()]
    assert len(labels) == len(set(labels))
    assert Setting().label() == "baseline"


def test_default_view_shows_every_family_with_memory_and_compute(capsys):
    from prac_dist.planner.plan import _families, candidate_settings, family

    assert main(["--model", "llama_130m", "--micro-batch", "128", "--seq-len", "256", "--engine", "zero2",
                 "--world-size", "4", "--budget", "24GiB"]) == 0
    text = capsys.readouterr().out
    p = plan("llama_130m", 128, 256, "zero2", 4, 24 * GIB)
    shown = _families(p.rows)
    # 8-bit and 16-bit Z, fused and HF loss, lean/default/paper PRAC, checkpointing: one row each.
    assert {family(r.setting) for r in shown} == {family(s) for s in candidate_settings()}
    for r in shown:
        assert r.setting.label() in text
    assert "Z 8-bit" in text and "fused loss" in text and "TFLOP" in text and "compute" in text
    assert "columns:" in text and "why:" in text
