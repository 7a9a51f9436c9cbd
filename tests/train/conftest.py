"""Fixtures for the prac-train tests."""

import pytest

from prac_dist.train.data import BUNDLED_DIR


@pytest.fixture
def corpus(tmp_path):
    """~12k GPT-2 tokens of training text and ~5k of held-out text."""
    text = (BUNDLED_DIR / "wikitext-2" / "valid.txt").read_text()
    train, held = tmp_path / "train.txt", tmp_path / "eval.txt"
    train.write_text(text[:60000])
    held.write_text(text[60000:85000])
    return train, held

