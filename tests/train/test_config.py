"""Settings: every bad key or type is one line naming it, exit status 2, no traceback."""

import pytest
import yaml

import json
from pathlib import Path

from prac_dist import PRACConfig
from prac_dist.train.cli import main
from prac_dist.train.config import ConfigError, load_config, parse_override
from prac_dist.train.optim import warmup_cosine

from _train_util import run_cli, tiny_config


def _write(tmp_path, data):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize("data, named", [
    ({"train": {"max_stepz": 3}}, "train.max_stepz"),
    ({"train": {"max_steps": "ten"}}, "train.max_steps"),
    ({"train": {"max_steps": True}}, "train.max_steps"),
    ({"optim": {"betas": [0.9]}}, "optim.betas"),
    ({"optim": {"lr": -1.0}}, "optim.lr"),
    ({"prac": {"principal_ratoi": 0.3}}, "prac.principal_ratoi"),
    ({"prac": {"principal_ratio": "high"}}, "prac.principal_ratio"),
    ({"model": {"preset": None}}, "model.preset"),
    ({"trian": {}}, "trian"),
    ({"data": {"train_files": ["a.txt"], "dataset": "c4"}}, "data.dataset"),
])
def test_bad_config_is_one_line_exit_2(tmp_path, capsys, data, named):
    assert main(["--config", _write(tmp_path, data), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("prac-train: error: ") and named in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("data, line", [
    ({"train": {"max_stepz": 3}}, "train.max_stepz: unknown key; did you mean 'max_steps'?"),
    ({"trian": {}}, "trian: unknown key; did you mean 'train'?"),
    ({"prac": {"principle_ratio": 0.3}}, "prac.principle_ratio: unknown key; did you mean 'principal_ratio'?"),
    ({"optim": {"betas": [0.9]}}, "optim.betas=[0.9] has the wrong type (list): accepted is a list of 2 numbers"),
    ({"prac": {"kernel": "cuda"}}, "prac.kernel='cuda': accepted is one of ['auto', 'triton', 'torch']"),
])
def test_error_line_names_field_value_and_nearest_key(tmp_path, capsys, data, line):
    assert main(["--config", _write(tmp_path, data), "--print-config"]) == 2
    assert capsys.readouterr().err.strip() == f"prac-train: error: {line}"


def test_flags_are_never_abbreviated(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--max-step", "5", "--print-config"])  # argparse's default would run this as --max-steps 5
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == ("prac-train: error: unrecognized arguments: --max-step 5 "
                                               "(did you mean --max-steps?)")


def test_target_modules_the_model_lacks_is_one_line(tmp_path, corpus, capsys):
    # Used to exit 1 with a 21-line traceback from apply_prac.
    assert main(["--config", tiny_config(tmp_path, corpus), "--output-dir", tmp_path / "out",
                 "--set", "prac.target_modules=[nonexistent]", "--set", "train.measure_memory=false"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        "prac-train: error: PRACConfig.target_modules: ['nonexistent'] match no module of this model; "
        "accepted are names of its nn.Linear/Conv1D modules")
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_bad_override_and_flags(tmp_path, capsys):
    assert main(["--set", "train.nope=1"]) == 2
    assert "train.nope" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--max-steps", "ten"])
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_console_script_prints_no_traceback(tmp_path):
    proc = run_cli(["--config", _write(tmp_path, {"optim": {"lr": "fast"}})], timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "prac-train: error: optim.lr='fast' has the wrong type (str): accepted is a number"]


def test_overrides_are_typed_and_win_over_the_file(tmp_path):
    path = _write(tmp_path, {"train": {"max_steps": 5}, "optim": {"lr": 1.0e-3}})
    cfg = load_config(path, dict([parse_override("train.max_steps=7"), parse_override("optim.lr=3e-4"),
                                  parse_override("prac.seed=3")]))
    assert cfg.train.max_steps == 7 and cfg.optim.lr == 3e-4 and cfg.prac.seed == 3
    assert load_config(path, {"prac": None}).prac is None
    # PyYAML reads 3e-4 (no dot) as a string; a number field accepts it, an int field does not.
    assert load_config(_write(tmp_path, {"optim": {"lr": "3e-4"}})).optim.lr == 3e-4
    with pytest.raises(ConfigError, match="train.max_steps"):
        load_config(path, {"train.max_steps": 7.0})


def test_print_config_round_trips(tmp_path, capsys):
    assert main(["--print-config", "--max-steps", "9", "--no-prac"]) == 0
    dumped = capsys.readouterr().out
    again = load_config(_write(tmp_path, yaml.safe_load(dumped)))
    assert again.train.max_steps == 9 and again.prac is None


def test_warmup_cosine_schedule_values():
    # linear warmup over 4 steps, then cosine from 1 to 0.1 over the remaining 10
    assert [warmup_cosine(s, 4, 14, 0.1) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert warmup_cosine(4, 4, 14, 0.1) == 1.0
    assert warmup_cosine(9, 4, 14, 0.1) == pytest.approx(0.55, abs=1e-12)  # halfway: (1 + 0.1) / 2
    assert warmup_cosine(14, 4, 14, 0.1) == pytest.approx(0.1, abs=1e-12)


# ---- one route for PRAC settings under --deepspeed -------------------------------------------------
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _ds(tmp_path, prac=None):
    cfg = {"train_micro_batch_size_per_gpu": "auto"}
    if prac is not None:
        cfg["prac"] = prac
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def test_json_enabled_false_turns_prac_off_even_with_a_yaml_section(tmp_path):
    yaml_path = _write(tmp_path, {"prac": {"principal_update_interval": 40}})
    for config in (yaml_path, None):
        cfg = load_config(config, {"backend.kind": "deepspeed",
                                   "backend.deepspeed_config": _ds(tmp_path, {"enabled": False})})
        assert cfg.prac is None and '"enabled": false' in cfg.prac_source


def test_prac_settings_in_yaml_and_json_are_an_error_naming_both(tmp_path, capsys):
    yaml_path = _write(tmp_path, {"prac": {"principal_update_interval": 40}})
    ds = _ds(tmp_path, {"principal_ratio": 0.25, "offload": {"device": "none"}})
    assert main(["--config", yaml_path, "--deepspeed", ds, "--print-config"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"prac-train: error: PRAC settings given twice: the prac: section of {yaml_path} and the \"prac\" "
        f"section of {ds} (sets principal_ratio); keep one of them (the JSON section may keep \"enabled\" "
        f"and \"offload\")")
    assert main(["--deepspeed", ds, "--set", "prac.seed=3", "--print-config"]) == 2
    assert "PRAC settings given twice: --set prac.seed and the" in capsys.readouterr().err


def test_each_route_alone_is_used(tmp_path):
    ds_fields = _ds(tmp_path, {"principal_ratio": 0.25})
    cfg = load_config(None, {"backend.kind": "deepspeed", "backend.deepspeed_config": ds_fields})
    assert cfg.prac == PRACConfig(principal_ratio=0.25) and cfg.prac_source == f'the "prac" section of {ds_fields}'
    yaml_path = _write(tmp_path, {"prac": {"principal_update_interval": 40}})
    for ds in (_ds(tmp_path, {"enabled": True, "offload": {"device": "cpu"}}), _ds(tmp_path)):
        cfg = load_config(yaml_path, {"backend.kind": "deepspeed", "backend.deepspeed_config": ds})
        assert cfg.prac.principal_update_interval == 40 and cfg.prac_source == f"the prac: section of {yaml_path}"
    # --no-prac (the baseline half of --compare) runs without PRAC whatever the JSON says.
    assert load_config(None, {"prac": None, "backend.kind": "deepspeed", "backend.deepspeed_config": ds_fields}).prac is None


@pytest.mark.parametrize("ds", sorted((CONFIGS / "ds").glob("*.json")), ids=lambda p: p.name)
def test_shipped_ds_configs_combine_with_the_shipped_yaml(ds):
    """README and launch/*.sh run llama_tiny.yaml with configs/ds/*.json: the YAML's prac: section is used."""
    yaml_path = CONFIGS / "train" / "llama_tiny.yaml"
    cfg = load_config(str(yaml_path), {"backend.kind": "deepspeed", "backend.deepspeed_config": str(ds)})
    # The YAML's section (the defaults, seed 0), not the JSON's: the source says which route was taken.
    assert cfg.prac == PRACConfig(seed=0) and cfg.prac_source == f"the prac: section of {yaml_path}"


def test_compare_with_prac_disabled_in_the_json_names_the_json(tmp_path, capsys):
    ds = _ds(tmp_path, {"enabled": False})
    assert main(["--compare", "--deepspeed", ds, "--output-dir", tmp_path / "o"]) == 2
    assert f'PRAC is off by "prac": {{"enabled": false}} in {ds}' in capsys.readouterr().err


@pytest.mark.parametrize("key, value, accepted", [
    ("train.precision", "fp16", "null or one of ['bf16', 'fp32']"),
    ("backend.kind", "tpu", "one of ['local', 'deepspeed', 'fsdp']"),
    ("backend.fsdp_mixed_precision", "none", "one of ['bf16', 'fp32']"),
    ("model.attn_implementation", "flash", "one of ['sdpa', 'eager']"),
])
def test_choices_come_from_the_literal_annotations(key, value, accepted):
    with pytest.raises(ConfigError) as info:
        load_config(None, {key: value})
    assert str(info.value) == f"{key}={value!r}: accepted is {accepted}"


def test_fsdp_precision_has_one_spelling():
    from prac_dist.train.backends.fsdp import MIXED_PRECISION, FSDPBackend

    assert sorted(MIXED_PRECISION) == ["bf16", "fp32"] and FSDPBackend().mixed_precision == "fp32"
    with pytest.raises(ValueError, match=r"mixed_precision='none': accepted is one of \['bf16', 'fp32'\] "
                                         r"\(float32 throughout is 'fp32'\)"):
        FSDPBackend(mixed_precision="none")


def test_optimizer_spec_is_the_optim_section_plus_the_loop():
    import dataclasses

    from prac_dist.train.optim import OptimizerSpec

    cfg = load_config(None, {"optim.lr": 3e-4, "optim.betas": [0.8, 0.9], "train.grad_accum": 4})
    spec = OptimizerSpec.from_config(cfg.optim, cfg.train.max_steps, cfg.train.grad_accum)
    assert dataclasses.asdict(spec) == {**dataclasses.asdict(cfg.optim), "max_steps": 100, "grad_accum": 4}
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.lr = 1.0
