"""Bad configuration is a ValueError naming the field, the value and what is accepted."""

import pytest
import torch
from torch import nn

from prac_dist import PRACConfig, apply_prac


@pytest.mark.parametrize("kwargs, words", [
    ({"principal_ratio": 1.5}, ["principal_ratio", "1.5", "[0, 1]"]),
    ({"random_ratio": -0.1}, ["random_ratio", "-0.1", "[0, 1]"]),
    ({"principal_ratio": 0.7, "random_ratio": 0.5}, ["principal_ratio + random_ratio", "1.2", "cannot exceed"]),
    ({"principal_ratio": 0.0, "random_ratio": 0.0}, ["both 0", "(0, 1]"]),
    ({"principal_update_interval": 0}, ["principal_update_interval", "0", ">= 1"]),
    ({"random_update_interval": -3}, ["random_update_interval", "-3", ">= 1"]),
    ({"random_update_interval": True}, ["random_update_interval", "True", "integer"]),
    ({"compress_nonlinear": 1}, ["compress_nonlinear", "1", "true or false"]),
    ({"kernel": "cuda"}, ["kernel", "'cuda'", "auto"]),
    ({"storage_bits": 4}, ["storage_bits", "4", "[16, 8]"]),
    ({"target_modules": [1]}, ["target_modules[0]", "1", "a string"]),
    ({"target_modules": "q_proj"}, ["target_modules", "null or a list of strings"]),
    ({"adaptive_rank": "on"}, ["adaptive_rank", "'on'", "['off', 'min_variance', 'energy', 'global']"]),
    ({"principal_schedule": "often"}, ["principal_schedule", "'often'", "'early_dense', 'drift'"]),
    ({"principal_drift": 0.0}, ["principal_drift", "0.0", "(0, 1]"]),
    ({"principal_drift": 1.5}, ["principal_drift", "1.5", "(0, 1]"]),
])
def test_bad_field_is_named(kwargs, words):
    with pytest.raises(ValueError) as err:
        PRACConfig(**kwargs)
    for word in words:
        assert word in str(err.value)


def test_from_dict_rejects_unknown_key_and_auto():
    # The nearest accepted key, not all 20 of them.
    with pytest.raises(ValueError, match=r"^prac\.principle_ratio: unknown key; did you mean 'principal_ratio'\?$"):
        PRACConfig.from_dict({"principle_ratio": 0.3})
    with pytest.raises(ValueError, match=r"prac\.zzz: unknown key; accepted keys are \['adaptive_energy', "):
        PRACConfig.from_dict({"zzz": 0.3})
    with pytest.raises(ValueError, match=r"prac\.random_ratio='auto'"):
        PRACConfig.from_dict({"random_ratio": "auto"})
    with pytest.raises(ValueError, match=r"prac\.seed='1' has the wrong type \(str\)"):
        PRACConfig.from_dict({"seed": "1"})
    # `adaptive_rank: off` in YAML arrives as False: the error says to quote it.
    with pytest.raises(ValueError, match=r'prac\.adaptive_rank=False has the wrong type \(bool\): accepted is one of '
                                         r'\[.off., .min_variance., .energy., .global.\] \(YAML turns an unquoted off/on/no/yes into False: quote the '
                                         r'word, e\.g\. adaptive_rank: "off"\)'):
        PRACConfig.from_dict({"adaptive_rank": False})
    cfg = PRACConfig.from_dict({"principal_ratio": 0.25, "target_modules": ["q_proj"]})
    assert cfg.target_modules == ("q_proj",) and PRACConfig.from_dict(cfg.to_dict()) == cfg


def test_ranks_are_floors():
    cfg = PRACConfig(principal_ratio=0.3, random_ratio=0.3)
    assert cfg.ranks(10) == (3, 3) and cfg.ranks(768) == (230, 230)
    assert cfg.ranks(2048, nonlinear=True) == (409, 409)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 8)
        self.emb = nn.Embedding(10, 16)
        self.tiny = nn.Linear(2, 2)


def test_model_errors(make_llama):
    with pytest.raises(ValueError, match=r"model type None is not in the model registry \(registered: \[.*target_modules"):
        apply_prac(Toy(), PRACConfig())
    with pytest.raises(ValueError, match=r"\['nope'\] match no module"):
        apply_prac(Toy(), PRACConfig(target_modules=["proj", "nope"]))
    with pytest.raises(ValueError, match=r"'emb' is a Embedding, which PRAC cannot compress"):
        apply_prac(Toy(), PRACConfig(target_modules=["emb"]))
    with pytest.raises(ValueError, match=r"tiny: width n=2 is too small"):
        apply_prac(Toy(), PRACConfig(target_modules=["tiny"], principal_ratio=0.2, random_ratio=0.2))
    model = apply_prac(make_llama(), PRACConfig(fused_loss=False))
    with pytest.raises(ValueError, match="already applied"):
        apply_prac(model, PRACConfig())
    with pytest.raises(ValueError, match="must be a PRACConfig"):
        apply_prac(make_llama(), {"principal_ratio": 0.3})


def test_schedule_fields_come_through_from_dict():
    """The DeepSpeed JSON "prac" section and the YAML prac: section both build through from_dict."""
    cfg = PRACConfig.from_dict({"principal_schedule": "drift", "principal_drift": 0.8,
                                "nonlinear_principal_schedule": "early_dense"})
    assert cfg.principal_schedule == "drift" and cfg.principal_drift == 0.8
    assert cfg.nonlinear_principal_schedule == "early_dense"
    assert PRACConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"prac\.principal_drift='0\.8' has the wrong type \(str\)"):
        PRACConfig.from_dict({"principal_drift": "0.8"})
