"""report.md splits the saving between the loss head and the decoder layers, and states the compute it costs."""

import json

from prac_dist.train.report import split_saved, write_report

MIB = 2**20


def _run(path, saved, by_name, tokens_per_s, val=5.0):
    path.mkdir()
    records = [{"step": 0, "kind": "memory", "saved_bytes": saved, "saved_by_module_name": by_name},
               {"step": 1, "kind": "train", "train_loss": val + 1, "tokens_per_s": tokens_per_s},
               {"step": 1, "kind": "eval", "val_loss": val, "val_ppl": 150.0}]
    (path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    summary = {"final_train_loss": val + 1, "final_val_loss": val, "final_val_ppl": 150.0, "saved_bytes": saved,
               "median_tokens_per_s": tokens_per_s, "train_time_s": 10.0}
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
    assert "Compute it costs: +25.0% time per token" in text
