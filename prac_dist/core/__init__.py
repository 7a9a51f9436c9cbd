"""The PRAC math: bases and compressor (subspace), storage, the cost model and the linear autograd Function."""

from prac_dist.core.linear import prac_linear
from prac_dist.core.storage import is_compressed_activation

__all__ = ["prac_linear", "is_compressed_activation"]
