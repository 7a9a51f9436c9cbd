"""HF Trainer + DeepSpeed ZeRO-2 + a "prac" section, one process (world size 1).

    DS_ACCELERATOR=cpu python tests/deepspeed/hf_trainer_worker.py OUT.json WORKDIR

Trains 4 steps with a checkpoint at step 2, then resumes a second Trainer from
checkpoint-2 to step 4; writes what test_deepspeed_hf_trainer.py asserts on.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("DS_ACCELERATOR", "cpu")
for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
    os.environ.setdefault(key, value)

import torch  # noqa: E402
from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import prac_dist  # noqa: E402
from prac_dist.integrations import PRACTrainerCallback  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ds_worker  # noqa: E402  (model shape and data)

DS_CONFIG = {
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                              "weight_decay": "auto", "torch_adam": True}},
    "zero_optimization": {"stage": 2},
    "bf16": {"enabled": False},
    "steps_per_print": 10**9,
    "prac": {"principal_update_interval": 2, "random_update_interval": 2},
}


class Sequences(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, i):
        x = ds_worker.batch(0, i, 0)[0]
        return {"input_ids": x, "labels": x.clone()}


class Probe(TrainerCallback):
    """Records, at every optimizer step, the module types inside the DeepSpeed engine and the PRAC step."""

    def __init__(self):
        self.seen = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        q_proj = model.model.layers[0].self_attn.q_proj
        self.seen.append({"global_step": state.global_step, "q_proj": type(q_proj).__name__,
                          "prac_step": prac_dist.prac_state_dict(model)["step"]})


def make_trainer(workdir: str, max_steps: int):
    probe = Probe()
    args = TrainingArguments(output_dir=workdir, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                             max_steps=max_steps, learning_rate=3e-3, logging_steps=1, save_steps=2,
                             save_strategy="steps", report_to=[], deepspeed=DS_CONFIG, use_cpu=True,
                             dataloader_num_workers=0, seed=0, data_seed=0, lr_scheduler_type="constant")
    torch.manual_seed(0)
    trainer = Trainer(model=ds_worker.build_model(), args=args, train_dataset=Sequences(),
                      callbacks=[PRACTrainerCallback(), probe])
    return trainer, probe


def losses(trainer) -> dict:
    return {int(r["step"]): r["loss"] for r in trainer.state.log_history if "loss" in r}


def main() -> int:
    out_path, workdir = sys.argv[1], sys.argv[2]
    hf_logging.set_verbosity_error()
    torch.set_num_threads(1)
    trainer, probe = make_trainer(workdir, max_steps=4)
    trainer.train()
    engine_module = trainer.model_wrapped.module
    straight = {"losses": losses(trainer), "probe": probe.seen,
                "engine_is_deepspeed": type(trainer.model_wrapped).__name__,
                "engine_q_proj": type(engine_module.model.layers[0].self_attn.q_proj).__name__,
                "checkpoint2_files": sorted(os.listdir(os.path.join(workdir, "checkpoint-2")))}
    del trainer
    resumed_trainer, resumed_probe = make_trainer(workdir, max_steps=4)
    resumed_trainer.train(resume_from_checkpoint=os.path.join(workdir, "checkpoint-2"))
    resumed = {"losses": losses(resumed_trainer), "probe": resumed_probe.seen}
    with open(out_path, "w") as fh:
        json.dump({"straight": straight, "resumed": resumed}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
