"""One process, DeepSpeed fp16 on CPU: which counters advance on an overflow-skipped step.

DeepSpeed's CPU accelerator reports fp16 as unsupported (deepspeed.initialize raises "Type fp16 is
not supported on your device"), although torch runs float16 matmuls on CPU and the loss scaler's
overflow check is device-independent (an inf/nan test on the gradients). The worker overrides
that capability check only, so the real ZeRO fp16 optimizer, loss scaler and engine.step run.
Prints one JSON line per optimizer step.
"""

import json
import os
import sys

import torch

os.environ.update(MASTER_ADDR="127.0.0.1", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")

import deepspeed  # noqa: E402
from deepspeed.accelerator import get_accelerator  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

import prac_dist  # noqa: E402
import prac_dist.deepspeed as pds  # noqa: E402


def main(stage: int, steps: int) -> None:
    get_accelerator().is_fp16_supported = lambda: True
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, vocab_size=128))
    # Loss scale 2^24 overflows fp16 gradients (max 65504) for the first steps; each overflow halves it.
    cfg = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2,
           "zero_optimization": {"stage": stage},
           "fp16": {"enabled": True, "initial_scale_power": 24, "loss_scale_window": 1000, "hysteresis": 1},
           "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
           "prac": {"principal_update_interval": 3, "random_update_interval": 3}}
    engine, _, _, scheduler = pds.initialize(
        model=model, model_parameters=model.parameters(), config=cfg,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0))
    x = torch.randint(0, 128, (2, 16))
    for _ in range(steps):
        before = [p.detach().float().clone() for p in engine.module.parameters()]
        for _micro in range(2):
            engine.backward(engine(input_ids=x, labels=x).loss)
            engine.step()
        moved = any(not torch.equal(b, p.detach().float()) for b, p in zip(before, engine.module.parameters()))
        print(json.dumps({"global_steps": engine.global_steps, "skipped_steps": engine.skipped_steps,
                          "prac_step": prac_dist.prac_state_dict(engine.module)["step"],
                          "scheduler_steps": scheduler.last_epoch, "weights_moved": moved}), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
