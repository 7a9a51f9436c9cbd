"""TRL's SFTTrainer with PRACTrainerCallback(PRACConfig()): PRAC is applied, stepped once per optimizer step,
and 50 steps of SFT on a tiny LLaMA end within 3% of the same run without PRAC (mean of the last 10 logged
losses: one step's loss moves with its batch)."""

import pytest
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM
from trl import SFTConfig, SFTTrainer

from prac_dist import PRACConfig, prac_state_dict
from prac_dist.integrations import PRACTrainerCallback
from prac_dist.train.data import load_tokenizer

STEPS = 50


def _data() -> Dataset:
    """Learnable rows: each token a fixed function of the previous one (vocabulary 128)."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(64):
        x = [int(torch.randint(0, 128, (1,), generator=g))]
        for _ in range(31):
            x.append((x[-1] * 5 + 3) % 128)
        rows.append({"input_ids": x})
    return Dataset.from_list(rows)


def _train(tmp_path, callbacks):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4, vocab_size=128))
    args = SFTConfig(output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=4, learning_rate=3e-3,
                     logging_steps=1, report_to=[], use_cpu=True, bf16=False, seed=0, data_seed=0,
                     save_strategy="no", disable_tqdm=True, lr_scheduler_type="constant")
    trainer = SFTTrainer(model=model, args=args, train_dataset=_data(), processing_class=load_tokenizer("bundled:gpt2"),
                         callbacks=callbacks)
    trainer.train()
    return trainer, [r["loss"] for r in trainer.state.log_history if "loss" in r]


@pytest.mark.slow
def test_sft_with_prac_ends_within_3_percent(tmp_path):
    _, base = _train(tmp_path / "base", [])
    trainer, prac = _train(tmp_path / "prac", [PRACTrainerCallback(PRACConfig())])
    assert type(trainer.model.model.layers[0].self_attn.q_proj).__name__ == "PRACLinear"
    assert prac_state_dict(trainer.model)["step"] == STEPS
    assert len(base) == len(prac) == STEPS
    assert sum(base[-10:]) < 0.5 * sum(base[:10]), "the baseline did not learn"
    tail_base, tail_prac = sum(base[-10:]) / 10, sum(prac[-10:]) / 10
    assert abs(tail_prac - tail_base) <= 0.03 * tail_base, (tail_base, tail_prac)
