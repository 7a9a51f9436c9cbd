"""The LM-head loss without the logits: chunked linear + cross-entropy, and its HF installer."""

from .hf import install_fused_loss, is_fused_loss_installed, uninstall_fused_loss
from .linear_cross_entropy import auto_chunk_size, linear_cross_entropy

__all__ = [
    "linear_cross_entropy",
    "auto_chunk_size",
    "install_fused_loss",
    "uninstall_fused_loss",
    "is_fused_loss_installed",
]
