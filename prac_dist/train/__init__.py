"""prac-train: the training entry point (CLI, config, models, data, loop, report).

The engine adapters live in prac_dist.train.backends (local: one process, deepspeed, fsdp); they
all implement prac_dist.train.backends.TrainBackend and share prac_dist.train.optim's AdamW and
warmup-cosine schedule. The engine integrations they wrap (prac_dist.deepspeed, prac_dist.fsdp)
never import this package.
"""

from prac_dist.train.backends import TrainBackend
from prac_dist.train.config import TrainConfig, load_config

__all__ = ["TrainConfig", "load_config", "TrainBackend", "train", "main"]


def train(*args, **kwargs):
    """See prac_dist.train.loop.train (imported lazily: it pulls in transformers)."""
    from prac_dist.train.loop import train as _train

    return _train(*args, **kwargs)


def main(argv=None) -> int:
    from prac_dist.train.cli import main as _main

    return _main(argv)
