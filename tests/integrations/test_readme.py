"""Every fenced block of README.md's "Use it with" section runs, each in a fresh process, on a tiny LLaMA.

The section promises its snippets are real: they are executed here as written, after a preamble
that defines `model`, `tokenizer`, `dataset` and `loader` (as the README says), in a temporary folder that also
holds the section's DeepSpeed JSON as ds.json. A single process plays rank 0 of 1 for DeepSpeed and FSDP2.
"""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ("A plain loop", "Hugging Face Trainer", "TRL", "Accelerate", "PEFT (LoRA)", "DeepSpeed", "FSDP2",
            "torchtitan")

PREAMBLE = '''
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils import logging
logging.set_verbosity_error()
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=4, vocab_size=128))

class Sequences(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        x = torch.randint(0, 128, (16,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": x, "labels": x.clone()}

dataset = Sequences()
from prac_dist.train.data import load_tokenizer
tokenizer = load_tokenizer("bundled:gpt2")
loader = torch.utils.data.DataLoader(dataset, batch_size=2)
'''


def use_it_with() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Use it with\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def blocks(language: str) -> dict:
    """{subsection title: [code of each ```language block]} of the section."""
    out = {}
    for part in re.split(r"\n### ", use_it_with())[1:]:
        title, body = part.split("\n", 1)
        out[title.strip()] = re.findall(rf"```{language}\n(.*?)```", body, flags=re.S)
    return out


def test_section_covers_every_integration():
    python = blocks("python")
    assert list(python) == list(SECTIONS)
    assert all(len(code) == 1 for code in python.values()), {k: len(v) for k, v in python.items()}
    assert len(blocks("json")["DeepSpeed"]) == 1


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("title", SECTIONS)
def test_snippet_runs(title, tmp_path):
    (tmp_path / "ds.json").write_text(blocks("json")["DeepSpeed"][0])
    script = tmp_path / "snippet.py"
    script.write_text(PREAMBLE + "\n" + blocks("python")[title][0])
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
               LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_port()))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-6000:]
