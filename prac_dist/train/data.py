"""Training data: files or a `datasets` corpus, tokenised, packed into fixed-length sequences.

Order is a pure function of (seed, position), so a checkpoint stores one
integer per rank and `--resume` replays the same micro-batches bit for bit:
- in memory: micro-batch g of rank r (of W) is sequences
  perm_e[(j*W + r)*B : (j*W + r + 1)*B] with e, j = divmod(g, batches per epoch)
  and perm_e a permutation seeded by (seed, e); ranks never share a sequence.
- streaming: each rank reads its own shard (`split_dataset_by_node`) through a
  seeded shuffle buffer; resume re-reads and skips the sequences already used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch

from prac_dist.train.config import ConfigError, DataConfig

__all__ = ["BUNDLED_DIR", "resolve_path", "load_tokenizer", "check_sources", "build_data", "TrainData"]

BUNDLED_DIR = Path(__file__).resolve().parents[1] / "data"
_BUNDLED = "bundled:"
_TEXT_SUFFIXES = (".txt", ".text", ".raw")
_JSON_SUFFIXES = (".json", ".jsonl")


def resolve_path(name: str) -> Path:
    """'bundled:wikitext-2/valid.txt' -> the copy shipped in prac_dist/data; other names are plain paths."""
    if name.startswith(_BUNDLED):
        return BUNDLED_DIR / name[len(_BUNDLED):]
    return Path(name).expanduser()


def load_tokenizer(name: str):
    """'bundled:gpt2' (GPT-2 byte-level BPE, 50257 tokens) or a Hugging Face tokenizer name/path."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if name == "bundled:gpt2":
        from tokenizers import ByteLevelBPETokenizer

        folder = BUNDLED_DIR / "gpt2-tokenizer"
        bpe = ByteLevelBPETokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
        # model_max_length: we tokenise whole documents and pack them, so no length warning applies.
        return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>",
                                       bos_token="<|endoftext|>", model_max_length=int(1e12))
    if name.startswith(_BUNDLED):
        raise ConfigError(f"data.tokenizer={name!r}: the bundled tokenizer is 'bundled:gpt2'")
    try:
        tok = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"data.tokenizer={name!r}: cannot load it ({_first_line(exc)})") from None
    tok.model_max_length = int(1e12)
    return tok


def check_sources(cfg: DataConfig) -> None:
    """Fail on a missing or unsupported file before any model is built or anything is written."""
    for key in ("train_files", "eval_files"):
        for name in getattr(cfg, key):
            path = resolve_path(name)
            if not path.is_file():
                raise ConfigError(f"data.{key}: {name!r} does not exist (resolved to {path})")
            if path.suffix not in _TEXT_SUFFIXES + _JSON_SUFFIXES:
                raise ConfigError(f"data.{key}: {name!r} has suffix {path.suffix!r}; accepted are "
                                  f"{list(_TEXT_SUFFIXES + _JSON_SUFFIXES)}")
    if cfg.train_files:
        kinds = {_file_kind(resolve_path(n)) for n in cfg.train_files + cfg.eval_files}
        if len(kinds) > 1:
            raise ConfigError("data.train_files / data.eval_files: mix of text and JSON files; use one kind")


class TrainData:
    """Batches for one rank: `next_batch()` for training, `eval_batches()` for the held-out split."""

    def __init__(self, train, eval_seqs: torch.Tensor, micro_batch: int, eval_batches: int):
        self._train = train
        self._eval = eval_seqs
        self._mb = micro_batch
        self._eval_batches = eval_batches

    @property
    def num_train_sequences(self) -> Optional[int]:
        return getattr(self._train, "num_sequences", None)

    def next_batch(self) -> torch.Tensor:
        return self._train.next_batch()

    def eval_batches(self) -> List[torch.Tensor]:
        n = self._eval.shape[0] // self._mb
        if self._eval_batches:
            n = min(n, self._eval_batches)
        return [self._eval[i * self._mb:(i + 1) * self._mb].long() for i in range(n)]

    def state_dict(self) -> Dict[str, Any]:
        return self._train.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self._train.load_state_dict(state)


def build_data(cfg: DataConfig, tokenizer, micro_batch: int, eval_batches: int, rank: int, world: int,
               seed: int) -> TrainData:
    if cfg.streaming:
        return _build_streaming(cfg, tokenizer, micro_batch, eval_batches, rank, world, seed)
    train_ds, eval_ds, add_eos = _load_in_memory(cfg)
    train = _pack(_token_stream(train_ds, tokenizer, cfg.text_field, add_eos), cfg.seq_len)
    if eval_ds is not None:
        eval_seqs = _pack(_token_stream(eval_ds, tokenizer, cfg.text_field, add_eos), cfg.seq_len)
    else:
        # The tail of the corpus is held out: contiguous, so no training sequence overlaps it.
        n_eval = max(1, int(round(cfg.eval_fraction * train.shape[0])))
        train, eval_seqs = train[:-n_eval], train[-n_eval:]
    if eval_seqs.shape[0] < micro_batch * world:
        raise ConfigError(f"data: the held-out split has {eval_seqs.shape[0]} sequences of {cfg.seq_len} tokens, "
                          f"fewer than micro_batch_size x world size = {micro_batch * world}")
    # Each rank evaluates its own slice; the loop averages over ranks.
    per_rank = eval_seqs.shape[0] // world
    eval_seqs = eval_seqs[rank * per_rank:(rank + 1) * per_rank]
    sampler = _PermutedBatches(train, micro_batch, rank, world, seed)
    return TrainData(sampler, eval_seqs, micro_batch, eval_batches)


class _PermutedBatches:
    def __init__(self, seqs: torch.Tensor, micro_batch: int, rank: int, world: int, seed: int):
        self.num_sequences = seqs.shape[0]
        self.batches_per_epoch = self.num_sequences // (micro_batch * world)
        if self.batches_per_epoch == 0:
            raise ConfigError(f"data: {self.num_sequences} training sequences are fewer than "
                              f"micro_batch_size x world size = {micro_batch * world}")
        self._seqs, self._mb, self._rank, self._world, self._seed = seqs, micro_batch, rank, world, seed
        self.position = 0
        self._perm_epoch, self._perm = -1, None

    def next_batch(self) -> torch.Tensor:
        epoch, j = divmod(self.position, self.batches_per_epoch)
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self._seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.num_sequences, generator=g), epoch
        start = (j * self._world + self._rank) * self._mb
        self.position += 1
        return self._seqs[self._perm[start:start + self._mb]].long()

    def state_dict(self) -> Dict[str, Any]:
        return {"kind": "memory", "position": self.position, "num_sequences": self.num_sequences,
                "world": self._world, "seed": self._seed}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        mine = self.state_dict()
        for key in ("kind", "num_sequences", "world", "seed"):
            if state.get(key) != mine[key]:
                raise ConfigError(f"--resume: the checkpoint's data {key} is {state.get(key)!r} but this run's is "
                                  f"{mine[key]!r}; resume with the same data, seed and world size")
        self.position = int(state["position"])


class _StreamedBatches:
    def __init__(self, make_stream, micro_batch: int):
        self._make_stream, self._mb = make_stream, micro_batch
        self.epoch, self.consumed = 0, 0
        self._it: Optional[Iterator[np.ndarray]] = None

    def _next_sequence(self) -> np.ndarray:
        for _ in range(2):
            if self._it is None:
                self._it = self._make_stream(self.epoch)
            try:
                seq = next(self._it)
                self.consumed += 1
                return seq
            except StopIteration:
                self._it, self.epoch, self.consumed = None, self.epoch + 1, 0
        raise ConfigError("data: the streamed training split yields no complete sequence")

    def next_batch(self) -> torch.Tensor:
        rows = [self._next_sequence() for _ in range(self._mb)]
        return torch.from_numpy(np.stack(rows)).long()

    def state_dict(self) -> Dict[str, Any]:
        return {"kind": "stream", "epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("kind") != "stream":
            raise ConfigError("--resume: the checkpoint was written with in-memory data, this run streams")
        self.epoch, self.consumed, self._it = int(state["epoch"]), 0, None
        # Re-reading is the price of streaming: C4 has no random access by sequence.
        for _ in range(int(state["consumed"])):
            self._next_sequence()


def _build_streaming(cfg: DataConfig, tokenizer, micro_batch, eval_batches, rank, world, seed) -> TrainData:
    from datasets.distributed import split_dataset_by_node

    if not cfg.eval_split:
        raise ConfigError("data.eval_split=None: streaming needs a held-out split (e.g. 'validation')")
    if eval_batches == 0:
        raise ConfigError("train.eval_batches=0: with streaming, give how many micro-batches to evaluate")
    train_ds = split_dataset_by_node(_load_split(cfg, cfg.train_split), rank=rank, world_size=world)
    train_ds = train_ds.shuffle(seed=seed, buffer_size=cfg.shuffle_buffer)

    def make_stream(epoch: int):
        train_ds.set_epoch(epoch)
        return _sequences(_token_stream(train_ds, tokenizer, cfg.text_field, True), cfg.seq_len)

    eval_ds = split_dataset_by_node(_load_split(cfg, cfg.eval_split), rank=rank, world_size=world)
    need = eval_batches * micro_batch
    rows = []
    for seq in _sequences(_token_stream(eval_ds, tokenizer, cfg.text_field, True), cfg.seq_len):
        rows.append(seq)
        if len(rows) == need:
            break
    if len(rows) < micro_batch:
        raise ConfigError(f"data.eval_split={cfg.eval_split!r}: fewer than {micro_batch} sequences on rank {rank}")
    return TrainData(_StreamedBatches(make_stream, micro_batch), torch.from_numpy(np.stack(rows)),
                     micro_batch, eval_batches)


def _file_kind(path: Path) -> str:
    return "text" if path.suffix in _TEXT_SUFFIXES else "json"


def _load_in_memory(cfg: DataConfig):
    """(train dataset, eval dataset or None, add EOS between documents)."""
    import datasets

    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()
    if cfg.train_files:
        kind = _file_kind(resolve_path(cfg.train_files[0]))
        files = {"train": [str(resolve_path(n)) for n in cfg.train_files]}
        if cfg.eval_files:
            files["eval"] = [str(resolve_path(n)) for n in cfg.eval_files]
        # Text files are read line by line with the line breaks kept, so concatenating the lines restores the
        # file exactly (WikiText's article structure included); JSON records are separate documents -> EOS.
        extra = {"keep_linebreaks": True} if kind == "text" else {}
        loaded = datasets.load_dataset(kind, data_files=files, **extra)
        _check_field(loaded["train"], cfg.text_field, f"data.train_files[0]={cfg.train_files[0]!r}")
        return loaded["train"], loaded.get("eval"), kind != "text"
    train = _load_split(cfg, cfg.train_split)
    eval_ds = _load_split(cfg, cfg.eval_split) if cfg.eval_split else None
    return train, eval_ds, True


def _load_split(cfg: DataConfig, split: str):
    import datasets

    datasets.disable_progress_bars()
    path = Path(cfg.dataset).expanduser()
    try:
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            loaded = datasets.load_from_disk(str(path))  # written by save_to_disk
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise ConfigError(f"data: split {split!r} not in {cfg.dataset}; it has {sorted(loaded)}")
                loaded = loaded[split]
            ds = loaded.to_iterable_dataset() if cfg.streaming else loaded
        else:
            ds = datasets.load_dataset(cfg.dataset, cfg.dataset_config, split=split, streaming=cfg.streaming)
    except ConfigError:
        raise
    except Exception as exc:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ValueError)
        raise ConfigError(f"data.dataset={cfg.dataset!r} split {split!r}: cannot load it ({_first_line(exc)})") \
            from None
    _check_field(ds, cfg.text_field, f"data.dataset={cfg.dataset!r}")
    return ds


def _check_field(ds, text_field: str, where: str) -> None:
    names = getattr(ds, "column_names", None)
    if names is not None and text_field not in names:
        raise ConfigError(f"data.text_field={text_field!r}: {where} has no such column; it has {list(names)}")


def _token_stream(ds, tokenizer, text_field: str, add_eos: bool) -> Iterator[List[int]]:
    """Token ids per document (1000 documents per tokenizer call: the fast tokenizer batches well)."""
    eos = tokenizer.eos_token_id
    if add_eos and eos is None:
        raise ConfigError("data.tokenizer: it has no EOS token to separate documents")
    batch: List[str] = []

    def flush():
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            yield ids + [eos] if add_eos else ids
        batch.clear()

    for example in ds:
        text = example[text_field]
        if text:
            batch.append(text)
        if len(batch) == 1000:
            yield from flush()
    if batch:
        yield from flush()


def _pack(docs: Iterator[List[int]], seq_len: int) -> torch.Tensor:
    ids = np.fromiter((t for doc in docs for t in doc), dtype=np.int32)
    n = ids.size // seq_len
    if n == 0:
        raise ConfigError(f"data: only {ids.size} tokens, fewer than one sequence of data.seq_len={seq_len}")
    return torch.from_numpy(ids[:n * seq_len].reshape(n, seq_len).copy())


def _sequences(docs: Iterator[List[int]], seq_len: int) -> Iterator[np.ndarray]:
    buf: List[int] = []
    for doc in docs:
        buf.extend(doc)
        while len(buf) >= seq_len:
            yield np.asarray(buf[:seq_len], dtype=np.int32)
            del buf[:seq_len]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
