"""Helpers for the prac-train tests: a tiny model on a slice of the bundled WikiText-2."""

import os
import subprocess
import sys

import yaml

# 2 layers x 64 wide with the GPT-2 vocabulary: a few tenths of a second per step on one CPU thread.
TINY_MODEL = {"preset": "llama_tiny",
              "overrides": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                            "num_attention_heads": 2, "num_key_value_heads": 2}}


def tiny_config(tmp_path, corpus, **train):
    cfg = {
        "model": TINY_MODEL,
        "data": {"train_files": [str(corpus[0])], "eval_files": [str(corpus[1])], "seq_len": 32},
        "optim": {"lr": 3.0e-3, "warmup_steps": 2},
        "train": {"max_steps": 4, "micro_batch_size": 4, "eval_every": 2, "eval_batches": 2,
                  "threads": 1, **train},
        "prac": {"principal_update_interval": 3, "random_update_interval": 2},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(args, timeout=300, python_args_only=False):
    """prac-train in a fresh interpreter (what a user runs); one thread so runs are reproducible.
    python_args_only: `args` go to python itself (e.g. ["-c", script, ...]) instead of `-m prac_dist.train`."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    head = [sys.executable] if python_args_only else [sys.executable, "-m", "prac_dist.train"]
    return subprocess.run(head + [str(a) for a in args], env=env, capture_output=True, text=True,
                          timeout=timeout)
