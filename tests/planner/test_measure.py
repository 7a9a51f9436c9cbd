"""prac_dist.planner.measure: the whole-step peak under FakeTensorMode, and the planner held to it.

The machinery runs here on tiny shapes (a few seconds each); the full-shape numbers are
benchmarks/results/peak_memory.json, and the planner's prediction is held to that file within 5%.
"""

import dataclasses
import json
from pathlib import Path

import pytest

from prac_dist.models.shapes import PRESETS
from prac_dist.planner.measure import RECIPES, largest_micro_batch, measure_peak, measure_peak_by_depth
from prac_dist.planner.plan import _evaluate

GIB = 2**30
TINY = dataclasses.replace(PRESETS["llama_60m"], hidden=64, layers=3, heads=4, ffn=176, vocab=1000)
# (tiny: fake-mode time goes to Python per op, ~1-2 s a measurement on a quiet 2-core machine)
RESULT = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "peak_memory.json"


@pytest.mark.parametrize("name", ["HF", "PRACConfig()"])
def test_parts_add_up_and_states_are_exact(name):
    # At these sizes the peak falls in forward/backward (at a tiny checkpointed model it is the
    # optimizer step, whose foreach temporaries count as optimizer state).
    m = measure_peak(TINY, RECIPES[name], 2, 32, "adamw")
    params = 2 * TINY.num_parameters()  # bf16
    assert m.parts["params"] == params
    tensors = 3 * TINY.layers * 3 + 3  # 7 linears and 2 norms per layer; embedding, final norm, lm_head
    # AdamW's two moments in the weights' bf16, and a float32 step count per parameter tensor.
    assert m.parts["optimizer"] == 2 * params + 4 * tensors
    assert sum(m.parts.values()) == m.peak_bytes
    mixed = measure_peak(TINY, RECIPES[name], 2, 32, "mixed")
    assert mixed.parts["optimizer"] == 6 * params  # float32 master, exp_avg, exp_avg_sq


def test_prac_and_the_fused_head_lower_the_peak():
    hf, prac = (measure_peak(TINY, RECIPES[n], 4, 64).peak_bytes for n in ("HF", "PRACConfig()"))
    assert prac < hf


@pytest.mark.parametrize("name", ["HF", "PRACConfig()"])
def test_depth_line_equals_the_whole_model(name):
    # Decoder layers are identical: the line through 1 and 2 layers lands on 3 to the byte.
    line = measure_peak_by_depth(TINY, RECIPES[name], 2, 32, depths=(1, 2))
    whole = measure_peak(TINY, RECIPES[name], 2, 32)
    assert line.peak_bytes == whole.peak_bytes
    assert line.parts == whole.parts


def test_largest_micro_batch_is_the_measured_boundary():
    cache = {}

    def measure(batch):
        if batch not in cache:
            cache[batch] = measure_peak(TINY, RECIPES["HF"], batch, 32).peak_bytes
        return cache[batch]

    budget = (measure(4) + measure(5)) // 2  # between 4 and 5 rows
    got = largest_micro_batch(measure, budget, probes=(1, 2), verify=True)
    assert got["largest"] == 4
    assert got["measured"]["4"] <= budget < got["measured"]["5"]


def test_largest_micro_batch_finds_the_boundary_past_a_kink():
    # A peak that is affine between the probes but steeper beyond them (another phase of the step holds
    # it at large batches): the first line overshoots by ~900 batches. The search re-draws the line
    # through the bracketing measurements and lands on the exact boundary in a few rounds.
    def peak(b):
        return 1000 + 10 * b + (25 * (b - 300) if b > 300 else 0)

    calls = []

    def measure(b):
        calls.append(b)
        return peak(b)

    budget = 20_000
    got = largest_micro_batch(measure, budget, probes=(64, 128), verify=True)
    want = max(b for b in range(1, 2000) if peak(b) <= budget)
    assert (got["largest"], got["verified"]) == (want, True) and got["predicted"] == 1900
    assert len(calls) <= 2 + 2 * 8
    # A search that cannot reach the boundary in its rounds says so and names only a batch that fits.
    short = largest_micro_batch(peak, budget, probes=(64, 128), verify=True, max_rounds=1)
    assert short["verified"] is False and peak(short["largest"]) <= budget


def test_bad_input_names_the_field():
    with pytest.raises(ValueError, match="optimizer='sgd'"):
        measure_peak(TINY, RECIPES["HF"], 1, 8, "sgd")
    with pytest.raises(ValueError, match="micro_batch=0"):
        measure_peak(TINY, RECIPES["HF"], 0, 8)
    with pytest.raises(ValueError, match="depths"):
        measure_peak_by_depth(TINY, RECIPES["HF"], 1, 8, depths=(2, 2))


def _rows():
    data = json.loads(RESULT.read_text())
    return [r for r in data["rows"] if r["micro_batch"] >= 64 and RECIPES[r["setting"]].planner_setting()
            is not None]


@pytest.mark.parametrize("row", _rows(), ids=lambda r: f"{r['model']}-{r['micro_batch']}-{r['optimizer']}-{r['setting']}")
def test_planner_peak_within_5_percent_of_measured(row):
    setting = RECIPES[row["setting"]].planner_setting()
    pred = _evaluate(PRESETS[row["model"]], setting, row["micro_batch"], row["seq_len"], "single", 1, 2, 80 * GIB,
                     row["optimizer"])
    assert abs(pred.peak_bytes - row["peak_bytes"]) <= 0.05 * row["peak_bytes"], (pred.components, row["parts"])
    if row["model"] in ("llama_130m", "llama_1b"):  # these peak in forward/backward, not in the update
        live = pred.components["activations"] + pred.components["transient"]
        measured = row["parts"]["activations"] + row["parts"]["temporaries"]
        assert abs(live - measured) <= 0.05 * measured + 0.05 * GIB, (pred.components, row["parts"])


def test_prac_plan_measures_a_users_config(tmp_path, capsys):
    from prac_dist.planner.cli import main
    from prac_dist.models.shapes import hf_config

    path = tmp_path / "config.json"
    path.write_text(hf_config(TINY).to_json_string())
    budget = measure_peak(TINY, RECIPES["HF"], 3, 32, "mixed").worst_bytes  # 3 rows of HF fit, 4 do not
    rc = main(["--model", str(path), "--micro-batch", "1", "--seq-len", "32", "--budget", str(budget), "--measure",
               "--whole-model", "--settings", "HF"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "largest micro-batch that fits: 3 with HF" in out


def test_prac_plan_measure_rejects_an_engine(capsys):
    from prac_dist.planner.cli import main

    assert main(["--model", "llama_60m", "--micro-batch", "1", "--seq-len", "8", "--budget", "1GiB", "--measure",
                 "--engine", "zero3", "--world-size", "2"]) == 2
    assert "--engine='zero3'" in capsys.readouterr().err
