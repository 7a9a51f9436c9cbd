"""prac-train: the training entry point (CLI, config, models, data, loop, report).

The engines live elsewhere: prac_dist.train.local (one process), prac_dist.deepspeed.backend,
prac_dist.fsdp.backend; they all implement prac_dist.train.backend.TrainBackend.
"""

from prac_dist.train.backend import OptimizerSpec, TrainBackend
from prac_dist.train.config import ConfigError, TrainConfig, load_config

__all__ = ["TrainConfig", "ConfigError", "load_config", "TrainBackend", "OptimizerSpec", "train", "main"]


def train(*args, **kwargs):
    """See prac_dist.train.loop.train (imported lazily: it pulls in transformers)."""
    from prac_dist.train.loop import train as _train

    return _train(*args, **kwargs)


def main(argv=None) -> int:
    from prac_dist.train.cli import main as _main

    return _main(argv)
