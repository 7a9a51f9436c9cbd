"""The "prac" section of a DeepSpeed config: accepted forms, and every bad input named before any step."""

import base64
import json
from pathlib import Path

import pytest
import torch

import prac_dist
from prac_dist.deepspeed import OffloadConfig, prepare_model
from prac_dist.deepspeed.config import load_ds_config, parse_prac_section

import deepspeed  # noqa: E402 - a missing deepspeed fails, never skips

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "ds"


def _b64(cfg: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(cfg).encode()).decode()


def test_path_dict_and_base64_give_the_same_section(tmp_path):
    cfg = {"train_micro_batch_size_per_gpu": 1,
           "prac": {"principal_ratio": 0.25, "random_ratio": 0.5, "offload": {"device": "cpu", "pin_memory": False}}}
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(cfg))
    sections = [parse_prac_section(c) for c in (cfg, str(path), path, _b64(cfg))]
    assert all(s == sections[0] for s in sections)
    s = sections[0]
    assert s.enabled is True  # a present section is on unless it says otherwise
    assert (s.config.principal_ratio, s.config.random_ratio) == (0.25, 0.5)
    assert s.offload == OffloadConfig(device="cpu", pin_memory=False)


def test_no_section_and_disabled_section():
    assert parse_prac_section({"zero_optimization": {"stage": 2}}) is None
    assert parse_prac_section({"prac": {"enabled": False}}).enabled is False


def test_shipped_configs_parse():
    for name in ("zero1", "zero2", "zero3", "zero3_offload"):
        section = parse_prac_section(CONFIGS / f"{name}.json")
        assert section is not None and section.enabled, name
    assert parse_prac_section(CONFIGS / "zero3_offload.json").offload.device == "cpu"
    assert load_ds_config(CONFIGS / "zero3.json")["zero_optimization"]["stage"] == 3


@pytest.mark.parametrize("section, named", [
    ({"principal_ratoi": 0.3}, "prac.principal_ratoi: unknown key"),
    ({"random_ratio": "0.3"}, "prac.random_ratio='0.3' has the wrong type"),
    ({"seed": "auto"}, "prac.seed='auto'"),
    ({"enabled": "auto"}, "prac.enabled='auto'"),
    ({"enabled": 1}, "prac.enabled=1 has the wrong type"),
    ({"compress_nonlinear": "yes"}, "prac.compress_nonlinear='yes' has the wrong type"),
    ({"principal_ratio": 0.7, "random_ratio": 0.7}, "principal_ratio + random_ratio = 1.4 > 1"),
    ({"offload": {"devcie": "cpu"}}, "prac.offload.devcie: unknown key"),
    ({"offload": {"device": "nvme"}}, "prac.offload.device='nvme'"),
    ({"offload": {"device": "auto"}}, "prac.offload.device='auto'"),
    ({"offload": {"pin_memory": "true"}}, "prac.offload.pin_memory='true' has the wrong type"),
    ({"offload": {"min_bytes": -1}}, "prac.offload.min_bytes=-1: accepted is an integer >= 0"),
    ({"offload": {"devcie": "cpu"}}, "did you mean 'device'?"),
    ({"offload": "cpu"}, "prac.offload='cpu'"),
])
def test_bad_section_names_the_key(section, named):
    with pytest.raises(ValueError) as err:
        parse_prac_section({"prac": section})
    assert named in str(err.value)


def test_bad_config_forms(tmp_path):
    with pytest.raises(ValueError, match="not an existing file and not valid base64"):
        load_ds_config("no/such/ds.json")
    dup = tmp_path / "dup.json"
    dup.write_text('{"prac": {}, "prac": {}}')
    with pytest.raises(ValueError, match="duplicate key 'prac'"):
        load_ds_config(dup)
    with pytest.raises(ValueError, match=r"prac=\[\]: expected an object"):
        parse_prac_section({"prac": []})


def test_initialize_rejects_a_bad_section_before_deepspeed_runs(make_llama, monkeypatch):

    import prac_dist.deepspeed as pds

    called = []
    monkeypatch.setattr(deepspeed, "initialize", lambda **kw: called.append(kw))
    model = make_llama()
    with pytest.raises(ValueError, match="prac.principal_ratoi: unknown key"):
        pds.initialize(model=model, config={"train_batch_size": 2, "prac": {"principal_ratoi": 0.3}})
    assert called == [] and not prac_dist.is_prac_model(model)


def test_initialize_patches_before_the_engine_is_built(make_llama, monkeypatch):
    """deepspeed.initialize must receive the PRAC modules (ZeRO-3 registers its hooks on what it gets)."""

    import prac_dist.deepspeed as pds

    class FakeEngine(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module, self.global_steps = module, 0

        def step(self):
            self.global_steps += 1

        def save_checkpoint(self, save_dir, tag=None, client_state={}, save_latest=True):
            return True

        def load_checkpoint(self, load_dir, tag=None, load_module_only=False):
            return load_dir, {}

    seen = {}

    def fake_initialize(**kw):
        seen["patched"] = prac_dist.is_prac_model(kw["model"])
        seen["config"] = kw["config"]
        return FakeEngine(kw["model"]), None, None, None

    monkeypatch.setattr(deepspeed, "initialize", fake_initialize)
    config = {"train_batch_size": 2, "prac": {"principal_update_interval": 1}}
    engine, *_ = pds.initialize(model=make_llama(), config=config)
    assert seen == {"patched": True, "config": config}  # the caller's config reaches DeepSpeed untouched
    engine.step()
    engine.step()
    assert prac_dist.prac_state_dict(engine.module)["step"] == 2  # one schedule step per optimizer step


def test_prepare_model_refuses_double_patching(make_llama):
    model = prac_dist.apply_prac(make_llama(), prac_dist.PRACConfig())
    with pytest.raises(ValueError, match="already applied"):
        prepare_model(model, parse_prac_section({"prac": {}}))
    assert prepare_model(make_llama(), parse_prac_section({"prac": {"enabled": False}})) is None


def _backend(ds: dict, **kw):
    from prac_dist.train.backends.deepspeed import DeepSpeedBackend

    backend = DeepSpeedBackend(ds, **kw)
    backend.world_size, backend.device = 2, torch.device("cpu")
    return backend


def _spec(grad_accum=2, grad_clip=1.0):
    from prac_dist.train.optim import OptimizerSpec

    return OptimizerSpec(lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8, grad_clip=grad_clip,
                         warmup_steps=0, max_steps=10, min_lr_ratio=0.1, grad_accum=grad_accum)


def test_backend_fills_auto_values_from_prac_train():
    ds = json.loads((CONFIGS / "zero2.json").read_text())
    ds["optimizer"] = {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "torch_adam": True}}
    cfg = _backend(ds, micro_batch_size=4)._resolved_config(prac_dist.PRACConfig(), _spec())
    assert cfg["gradient_accumulation_steps"] == 2 and cfg["train_micro_batch_size_per_gpu"] == 4
    assert cfg["gradient_clipping"] == 1.0 and cfg["bf16"]["enabled"] is False  # float32 on CPU
    assert cfg["optimizer"]["params"]["lr"] == 1e-3 and cfg["optimizer"]["params"]["betas"] == [0.9, 0.95]
    # The section never reaches initialize(): setup() applies the resolved prac_config (one route).
    assert "prac" not in cfg and "prac" not in _backend(ds)._resolved_config(None, _spec())


def test_backend_names_contradictions():
    from prac_dist.train.config import ConfigError

    ds = {"gradient_accumulation_steps": 4, "zero_optimization": {"stage": 1}}
    with pytest.raises(ConfigError, match=r"gradient_accumulation_steps=4 contradicts --grad-accum"):
        _backend(ds)._resolved_config(None, _spec(grad_accum=2))
    ds = {"train_batch_size": 12, "train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 1}}
    with pytest.raises(ConfigError, match=r"train_batch_size=12 != micro-batch 2 x accumulation 2 x 2 ranks = 8"):
        _backend(ds)._resolved_config(None, _spec())
    with pytest.raises(ConfigError, match=r"scheduler.params.warmup_num_steps='auto' cannot be resolved"):
        _backend({"scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": "auto"}}})._resolved_config(
            None, _spec())
    with pytest.raises(ConfigError, match=r"prac.kernel=3 has the wrong type"):
        _backend({"prac": {"kernel": 3}})
