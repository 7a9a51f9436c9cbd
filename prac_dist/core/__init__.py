"""The PRAC math: bases, compressor, storage and the linear autograd Function."""

from prac_dist.core.linear import PRACLinearFunction, prac_linear
from prac_dist.core.storage import is_compressed_activation
from prac_dist.core.subspace import Compressor, principal_basis, random_complement_basis

__all__ = ["Compressor", "PRACLinearFunction", "prac_linear", "principal_basis", "random_complement_basis",
           "is_compressed_activation"]
