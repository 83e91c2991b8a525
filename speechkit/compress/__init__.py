"""Compression: N:M sparsity (SR-STE), LSQ fake quantization with noise tempering, coverage, SAD,
export and deployment. See README.md, "Compression"."""

from .apply import CompressConfig, Coverage, QuantConfig, SparsityConfig, compress_model, set_state
from .sparsity import NMSparse, nm_mask

__all__ = ["CompressConfig", "Coverage", "NMSparse", "QuantConfig", "SparsityConfig", "compress_model",
           "nm_mask", "set_state"]
