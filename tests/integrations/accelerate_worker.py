"""Accelerate + PRAC: train 4 optimizer steps (gradient accumulation 2), save_state at 2, load_state, redo 3-4.

    python tests/integrations/accelerate_worker.py OUT_PREFIX plain          # in one process, no DeepSpeed
    DS_ACCELERATOR=cpu accelerate launch --num_processes 2 --use_deepspeed \
        --deepspeed_config_file ds.json tests/integrations/accelerate_worker.py OUT_PREFIX deepspeed

Each rank writes OUT_PREFIX<rank>.json: per-micro-batch losses of the first and the replayed steps 3-4,
PRAC's step after each optimizer step, and the files save_state wrote.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

import prac_dist
from prac_dist import PRACConfig
from prac_dist.integrations import prepare_accelerate

GAS, MICRO, SEQ, VOCAB = 2, 2, 16, 128
# Refresh every 2 optimizer steps: the replay from step 2 needs the restored bases and due flags.
PRAC = {"principal_update_interval": 2, "random_update_interval": 2}


def ds_json(path: str) -> None:
    config = {"train_micro_batch_size_per_gpu": MICRO, "gradient_accumulation_steps": GAS,
              "gradient_clipping": 1.0, "zero_optimization": {"stage": 2}, "bf16": {"enabled": False},
              "steps_per_print": 10**9, "prac": PRAC}
    with open(path, "w") as fh:
        json.dump(config, fh)


def build_model():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, vocab_size=VOCAB))


def batch(rank: int, step: int, micro: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * rank + 10 * step + micro)
    return torch.randint(0, VOCAB, (MICRO, SEQ), generator=g)


def run(accelerator, mode: str, workdir: str) -> dict:
    model = build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    config = PRACConfig(**PRAC) if mode == "plain" else None  # deepspeed: the JSON's "prac" section
    model, optimizer = prepare_accelerate(accelerator, model, optimizer, config=config)
    # The process group's rank: under the DeepSpeed plugin on CPU, Accelerate's own state reports
    # process_index 0 / num_processes 1 in every process (measured with 2), while DeepSpeed reduces over both.
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0

    def train(first: int, last: int):
        losses, steps = [], []
        for step in range(first, last):
            for micro in range(GAS):
                with accelerator.accumulate(model):
                    x = batch(rank, step, micro).to(accelerator.device)
                    loss = model(input_ids=x, labels=x).loss
                    accelerator.backward(loss)
                    optimizer.step()
                    optimizer.zero_grad()
                losses.append(loss.item())
            steps.append(prac_dist.prac_state_dict(model)["step"])
        return losses, steps

    first, first_steps = train(0, 2)
    checkpoint = os.path.join(workdir, "ckpt")
    accelerator.save_state(checkpoint)
    files = sorted(os.listdir(checkpoint))
    later, later_steps = train(2, 4)
    accelerator.load_state(checkpoint)
    replay, replay_steps = train(2, 4)
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    return {"rank": rank, "world": world, "accelerate_processes": accelerator.num_processes, "first": first, "later": later, "replay": replay,
            "steps": first_steps + later_steps, "replay_steps": replay_steps, "files": files,
            "engine": type(model).__name__}


def main() -> int:
    from accelerate import Accelerator

    out_prefix, mode = sys.argv[1], sys.argv[2]
    hf_logging.set_verbosity_error()
    torch.set_num_threads(1)
    accelerator = Accelerator(gradient_accumulation_steps=GAS) if mode == "plain" else Accelerator()
    workdir = os.environ.get("PRAC_WORKDIR") or tempfile.mkdtemp()
    result = run(accelerator, mode, workdir)
    with open(f"{out_prefix}{result['rank']}.json", "w") as fh:
        json.dump(result, fh)
    accelerator.wait_for_everyone()
    return 0


if __name__ == "__main__":
    sys.exit(main())
