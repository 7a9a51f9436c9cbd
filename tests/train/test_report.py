"""report.md splits the saving between the loss head and the decoder layers, and states the time PRAC costs as one
figure measured the same way for both runs (alternating steps), flagged when the spread hides it."""

import json

from prac_dist.train.report import split_saved, write_report

MIB = 2**20


def _run(path, saved, by_name, tokens_per_s, val=5.0, train_time=10.0):
    path.mkdir()
    records = [{"step": 0, "kind": "memory", "saved_bytes": saved, "saved_by_module_name": by_name},
               {"step": 1, "kind": "train", "train_loss": val + 1, "tokens_per_s": tokens_per_s},
               {"step": 1, "kind": "eval", "val_loss": val, "val_ppl": 150.0}]
    (path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    summary = {"final_train_loss": val + 1, "final_val_loss": val, "final_val_ppl": 150.0, "saved_bytes": saved,
               "median_tokens_per_s": tokens_per_s, "train_time_s": train_time}
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def test_split_by_module_name():
    by_name = {"model.layers.0.mlp": 3, "model.layers.11": 4, "model.norm": 5, "lm_head": 6, "": 7,
               "transformer.h.2.attn": 10}
    assert split_saved(by_name) == {"decoder": 17, "head": 18}
    assert split_saved(None) is None


def test_compare_report_credits_the_head_and_the_decoder_apart(tmp_path):
    base = _run(tmp_path / "baseline", 220 * MIB, {"model.layers.0": 20 * MIB, "": 200 * MIB}, 1000.0)
    prac = _run(tmp_path / "prac", 12 * MIB, {"model.layers.0": 8 * MIB, "": 4 * MIB}, 800.0, val=5.05)
    text = write_report(tmp_path, {"baseline": base, "prac": prac}, "t").read_text()
    assert "of the 208.0 MiB saved, 196.0 MiB (94%) are the loss head" in text
    assert "12.0 MiB (6%) the decoder layers' compression (20.0 -> 8.0 MiB, 60.0% less)" in text
    assert "Time per optimizer step" not in text  # no side-by-side timing: no time figure at all


def _compare(tmp_path, times, base_total=10.0, prac_total=11.0):
    base = _run(tmp_path / "baseline", 20 * MIB, None, 1000.0, train_time=base_total)
    prac = _run(tmp_path / "prac", 8 * MIB, None, 900.0, train_time=prac_total)
    (tmp_path / "timing.json").write_text(json.dumps(times))
    return write_report(tmp_path, {"baseline": base, "prac": prac}, "t").read_text()


def test_one_time_figure_from_alternating_steps(tmp_path):
    times = {"baseline": [0.100, 0.101, 0.099, 0.100, 0.100], "prac": [0.110, 0.111, 0.109, 0.110, 0.110]}
    text = _compare(tmp_path, times, base_total=10.0, prac_total=11.0)
    assert ("baseline 100 ms (interquartile 100-100), PRAC 110 ms (110-110): PRAC costs +10.0% time per step"
            in text)
    assert "noisy" not in text
    # The totals agree with the side-by-side figure (+10.0% both): nothing to explain.
    assert "(11 s vs 10 s, +10.0%)" in text and "the load changed" not in text


def test_spread_larger_than_the_difference_is_called_noise(tmp_path):
    times = {"baseline": [0.08, 0.12, 0.10, 0.09, 0.11], "prac": [0.09, 0.13, 0.101, 0.10, 0.12]}
    assert "noisy: the spread of the step times is larger than the difference" in _compare(tmp_path, times)


def test_totals_that_disagree_with_the_figure_are_explained(tmp_path):
    times = {"baseline": [0.1] * 4, "prac": [0.11] * 4}
    text = _compare(tmp_path, times, base_total=539.0, prac_total=697.0)
    assert "(697 s vs 539 s, +29.3%)" in text and "they differ from it by 19%: the load changed" in text
    assert (tmp_path / "report.png").stat().st_size > 10_000  # three panels drawn
