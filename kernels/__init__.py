"""Triton kernels of fp4linear (installed as `fp4linear.kernels`; never a top-level `kernels`).

Kernels and their launchers only: no torch.nn, no backend policy. Launchers take already
validated, already allocated tensors; `fp4linear` does the checking and allocation.
"""

from .act_quantize_launch import ACTS, AmaxConfig, act_pad_quantize, activation, amax_config
from .gemm_launch import GemmConfig, gemm_config, nvfp4_gemm
from .quantize_launch import QuantConfig, pad_quantize, quant_config

__all__ = ["ACTS", "AmaxConfig", "GemmConfig", "QuantConfig", "act_pad_quantize", "activation", "amax_config", "gemm_config",
           "nvfp4_gemm", "pad_quantize", "quant_config"]
