"""Settings: every bad key or type is one line naming it, exit status 2, no traceback."""

import pytest
import yaml

from prac_dist.train.cli import main
from prac_dist.train.config import ConfigError, load_config, parse_override
from prac_dist.train.local import warmup_cosine

from _train_util import run_cli


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
