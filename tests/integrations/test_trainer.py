"""transformers.Trainer without DeepSpeed: PRACTrainerCallback(PRACConfig(...)) patches, steps, checkpoints.

One process on CPU. The schedule refreshes every 2 optimizer steps (T1 = T2 = 2) with gradient
accumulation 2, so a resume that lost PRAC's state or counted micro-batches would change the losses.
"""

import os

import pytest
import torch

import accelerate  # noqa: F401 - Trainer needs it; a missing one fails, never skips
from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402

import prac_dist  # noqa: E402
from prac_dist import PRACConfig  # noqa: E402
from prac_dist.integrations import PRACTrainerCallback  # noqa: E402

CFG = PRACConfig(principal_update_interval=2, random_update_interval=2)


class Sequences(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, i):
        x = torch.randint(0, 128, (16,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": x, "labels": x.clone()}


class Probe(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.steps.append((state.global_step, prac_dist.prac_state_dict(model)["step"]))


def train(make_llama, workdir, resume=None, callback=None):
    probe = Probe()
    args = TrainingArguments(output_dir=str(workdir), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                             max_steps=6, learning_rate=3e-3, logging_steps=1, save_steps=3, report_to=[],
                             use_cpu=True, dataloader_num_workers=0, seed=0, data_seed=0,
                             lr_scheduler_type="constant", disable_tqdm=True)
    trainer = Trainer(model=make_llama(), args=args, train_dataset=Sequences(),
                      callbacks=[callback or PRACTrainerCallback(CFG), probe])
    trainer.train(resume_from_checkpoint=resume)
    losses = {r["step"]: r["loss"] for r in trainer.state.log_history if "loss" in r}
    return trainer, losses, probe.steps


@pytest.mark.slow
def test_trainer_schedule_checkpoint_and_bit_exact_resume(make_llama, tmp_path):
    trainer, straight, steps = train(make_llama, tmp_path)
    assert type(trainer.model.model.layers[0].self_attn.q_proj).__name__ == "PRACLinear"
    assert steps == [(s, s) for s in range(1, 7)]  # one schedule step per optimizer step, not per micro-batch
    assert "prac_rank00000.pt" in os.listdir(tmp_path / "checkpoint-3")
    _, resumed, steps = train(make_llama, tmp_path, resume=str(tmp_path / "checkpoint-3"))
    assert steps == [(s, s) for s in range(4, 7)]
    assert [resumed[s] for s in (4, 5, 6)] == [straight[s] for s in (4, 5, 6)]  # bit for bit on CPU


@pytest.mark.slow
def test_resume_without_prac_state_is_an_error(make_llama, tmp_path):
    train(make_llama, tmp_path)
    os.remove(tmp_path / "checkpoint-3" / "prac_rank00000.pt")
    with pytest.raises(ValueError, match="no PRAC state"):
        train(make_llama, tmp_path, resume=str(tmp_path / "checkpoint-3"))


def test_callback_needs_something_to_apply(make_llama, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    with pytest.raises(ValueError, match="nothing to apply"):
        Trainer(model=make_llama(), args=args, callbacks=[PRACTrainerCallback()])
    with pytest.raises(ValueError, match="accepted is a PRACConfig"):
        PRACTrainerCallback({"prac": {}})


def test_callback_leaves_a_patched_model_alone(make_llama, tmp_path):
    model = prac_dist.apply_prac(make_llama(), CFG)
    state = prac_dist.patching.get_prac_state(model)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    Trainer(model=model, args=args, callbacks=[PRACTrainerCallback()])
    assert prac_dist.patching.get_prac_state(model) is state
