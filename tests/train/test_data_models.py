"""Data order, sharding and resume position; tokenizer; model presets; vocabulary check."""

import json

import pytest
import torch

from prac_dist.train.config import ConfigError, DataConfig, ModelConfig
from prac_dist.train.data import build_data, check_sources, load_tokenizer
from prac_dist.train.models import PRESETS, build_model, check_vocab


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("bundled:gpt2")


def _data(corpus, tok, rank=0, world=1, seed=0, mb=4, **kw):
    cfg = DataConfig(train_files=[str(corpus[0])], eval_files=[str(corpus[1])], seq_len=32, **kw)
    return build_data(cfg, tok, micro_batch=mb, eval_batches=2, rank=rank, world=world, seed=seed)


def test_bundled_tokenizer_is_gpt2(tok):
    assert len(tok) == 50257 and tok.eos_token_id == 50256
    assert tok("Hello world", add_special_tokens=False)["input_ids"] == [15496, 995]  # GPT-2's ids


def test_text_packing_keeps_the_file_verbatim(corpus, tok):
    data = _data(corpus, tok)
    first = data._train._seqs[:3].reshape(-1).tolist()
    assert corpus[0].read_text().startswith(tok.decode(first))


def test_json_documents_are_separated_by_eos(tmp_path, tok):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": f"document number {i} " * 20}) + "\n" for i in range(40)))
    cfg = DataConfig(train_files=[str(path)], seq_len=16, eval_fraction=0.1)
    data = build_data(cfg, tok, micro_batch=2, eval_batches=1, rank=0, world=1, seed=0)
    seqs = torch.cat([data._train._seqs.reshape(-1), data._eval.reshape(-1)])
    assert int((seqs == tok.eos_token_id).sum()) in (39, 40)  # one per document (the last may be cut)
    with pytest.raises(ConfigError, match="data.text_field='body'"):
        build_data(DataConfig(train_files=[str(path)], text_field="body"), tok, 2, 1, 0, 1, 0)


def test_order_is_a_function_of_seed_and_position(corpus, tok):
    a, b = _data(corpus, tok), _data(corpus, tok)
    first = [a.next_batch() for _ in range(5)]
    state = a.state_dict()
    rest = [a.next_batch() for _ in range(150)]  # crosses an epoch boundary (~93 batches per epoch)
    b.load_state_dict(state)
    assert all(torch.equal(x, y) for x, y in zip(rest, [b.next_batch() for _ in range(150)]))
    assert not torch.equal(first[0], _data(corpus, tok, seed=1).next_batch())
    with pytest.raises(ConfigError, match="seed"):
        _data(corpus, tok, seed=1).load_state_dict(state)


def test_ranks_read_disjoint_sequences(corpus, tok):
    ranks = [_data(corpus, tok, rank=r, world=2) for r in range(2)]
    per_epoch = ranks[0]._train.batches_per_epoch
    seen = [{tuple(row.tolist()) for _ in range(per_epoch) for row in d.next_batch()} for d in ranks]
    assert len(seen[0]) == len(seen[1]) == per_epoch * 4
    assert not seen[0] & seen[1]
    evals = [torch.cat(d.eval_batches()) for d in ranks]
    assert not torch.equal(evals[0], evals[1])


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(ConfigError, match="data.train_files: .*nope.txt.* does not exist"):
        check_sources(DataConfig(train_files=[str(tmp_path / "nope.txt")]))
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(ConfigError, match="suffix '.csv'"):
        check_sources(DataConfig(train_files=[str(tmp_path / "x.csv")]))


@pytest.mark.parametrize("name, shape", [
    ("llama_60m", (512, 8, 8, 1376)), ("llama_130m", (768, 12, 12, 2048)), ("llama_350m", (1024, 24, 16, 2736)),
    ("llama_1b", (2048, 24, 32, 5461)), ("llama_7b", (4096, 32, 32, 11008)),
])
def test_paper_presets(name, shape):
    p = PRESETS[name]
    assert (p.hidden, p.layers, p.heads, p.ffn) == shape
    assert p.vocab == 32000
    model = build_model(ModelConfig(preset=name), seq_len=256, seed=0, materialize=False)  # shapes only, on meta
    assert sum(x.numel() for x in model.parameters()) == p.num_parameters()


def test_tiny_preset_and_vocab_check(tok):
    model = build_model(ModelConfig(overrides={"num_hidden_layers": 1}), seq_len=64, seed=0)
    check_vocab(model, len(tok), "bundled:gpt2")  # 50257 fits 50257
    small = build_model(ModelConfig(vocab_size=1000, overrides={"num_hidden_layers": 1}), seq_len=64, seed=0)
    with pytest.raises(ConfigError, match="50257 tokens but the model's vocabulary is 1000"):
        check_vocab(small, len(tok), "bundled:gpt2")
    with pytest.raises(ConfigError, match="model.overrides.hidden_sise"):
        build_model(ModelConfig(overrides={"hidden_sise": 3}), seq_len=64, seed=0)
    same = build_model(ModelConfig(overrides={"num_hidden_layers": 1}), seq_len=64, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), same.parameters()))
