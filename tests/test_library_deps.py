"""The library needs only torch and transformers: `pip install prac_dist` without the [train] extra can
apply PRAC and train; the trainer says which extra it needs."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # two fresh interpreters importing transformers

# pyyaml and tqdm come with transformers (huggingface_hub imports both).
TRAIN_ONLY = ("datasets", "matplotlib")
_BLOCK = "import sys\nfor name in %r:\n    sys.modules[name] = None  # import raises ImportError\n" % (TRAIN_ONLY,)

LIBRARY_USE = _BLOCK + """
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from prac_dist import PRACConfig, apply_prac, hook_optimizer
model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=2, vocab_size=64))
apply_prac(model, PRACConfig())
opt = torch.optim.AdamW(model.parameters())
hook_optimizer(opt, model)
ids = torch.randint(0, 64, (2, 8))
model(input_ids=ids, labels=ids).loss.backward()
opt.step()
print("trained")
"""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_library_runs_without_the_train_extra():
    proc = _run(LIBRARY_USE)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("trained"), proc.stderr[-3000:]


def test_trainer_names_the_extra_it_needs():
    # importlib.util.find_spec answers None for a name whose sys.modules entry is None.
    proc = _run(_BLOCK + "from prac_dist.train.cli import main\nsys.exit(main(['--print-config']))\n")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip() == ("prac-train: error: the trainer needs datasets, matplotlib: "
                                   "pip install 'prac_dist[train]'")
