"""Triton kernels of fp4linear (installed as `fp4linear.kernels`; never a top-level `kernels`).

Kernels and their launchers only: no torch.nn, no backend policy. Launchers take already
validated, already allocated tensors; `fp4linear` does the checking and allocation.
"""

from .act_quantize_launch import (ACTS, AmaxConfig, act_cublas_operands, act_fake_quantize, act_pad_quantize, act_width,
                                  activation, amax_config)
from .gemv_launch import GemvConfig, fuses_dynamic_scale, gemv_config, linear_gemv
from .layout import mma16_rows
from .gemm_launch import (GemmConfig, activation_order, gemm_config, nvfp4_gemm, nvfp4_gemm_dequantized_a,
                          nvfp4_gemm_quantize_x)
from .quant_dequant_launch import (OperandsConfig, alpha_epilogue, cublas_operands, dequantize_rows, dynamic_pass_barrier,
                                   fake_quantize, fake_quantize_dynamic, fuses_dynamic_scale_in_pass)
from .quantize_launch import QuantConfig, pad_quantize, quant_config
from . import maxima
from .maxima import DynamicScale
from .scales_launch import (ScaleConfig, dynamic_encode_scale, dynamic_gs_alpha, dynamic_maxima, dynamic_scales,
                            scale_config, scale_programs)
from .small_m_linear_launch import MAX_M as SMALL_M, SmallMConfig, linear_small_m, small_m_config

__all__ = ["ACTS", "AmaxConfig", "DynamicScale", "GemmConfig", "GemvConfig", "OperandsConfig", "QuantConfig", "SMALL_M", "ScaleConfig", "SmallMConfig",
           "act_cublas_operands", "act_fake_quantize", "act_pad_quantize", "act_width", "activation", "activation_order", "alpha_epilogue", "amax_config",
           "cublas_operands",
           "dequantize_rows", "dynamic_encode_scale", "dynamic_gs_alpha", "dynamic_maxima", "dynamic_pass_barrier", "dynamic_scales", "fake_quantize", "fake_quantize_dynamic",
           "fuses_dynamic_scale", "fuses_dynamic_scale_in_pass", "gemm_config", "gemv_config", "linear_gemv",
           "linear_small_m", "mma16_rows", "nvfp4_gemm", "nvfp4_gemm_dequantized_a", "nvfp4_gemm_quantize_x", "pad_quantize", "quant_config",
           "scale_config", "scale_programs",
           "small_m_config"]
