"""Memory accounting: bytes saved for backward, per module type (the source of every CPU memory number)."""

from prac_dist.memory.accounting import SavedBytesReport, measure_saved_bytes

__all__ = ["measure_saved_bytes", "SavedBytesReport"]
