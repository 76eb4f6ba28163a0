"""fp4linear: NVFP4 linear layers at any tensor-parallel size (format and API: docs/nvfp4.md)."""

import os as _os

# In a source checkout the Triton kernels live in <repo>/kernels; installs map them to
# fp4linear/kernels. Let the source tree resolve `fp4linear.kernels` the same way.
if not _os.path.isdir(_os.path.join(__path__[0], "kernels")):
    _root = _os.path.dirname(_os.path.abspath(__path__[0]))
    if _os.path.isfile(_os.path.join(_root, "kernels", "__init__.py")):
        __path__.append(_root)

from . import kernels, reference  # noqa: E402
from .format import (NVFP4Tensor, ScaleLayout, SWIZZLE_8x4, SWIZZLE_128x4, decode_scale, dequantize,  # noqa: E402
                     encode_scale, pad_k)
from .quant import quantize  # noqa: E402
from .act import act_quantize, activation  # noqa: E402
from .backends import BACKENDS, Plan, plan  # noqa: E402
from .linear import Linear, quantize_weight  # noqa: E402
from .mlp import GatedMLP  # noqa: E402
from .swap import calibrate, swap  # noqa: E402
from .load import from_pretrained, load_modelopt  # noqa: E402

__all__ = [
    "BACKENDS",
    "act_quantize",
    "activation",
    "GatedMLP",
    "Linear",
    "calibrate",
    "from_pretrained",
    "load_modelopt",
    "swap",
    "Plan",
    "plan",
    "NVFP4Tensor",
    "SWIZZLE_128x4",
    "SWIZZLE_8x4",
    "ScaleLayout",
    "decode_scale",
    "dequantize",
    "encode_scale",
    "kernels",
    "pad_k",
    "quantize",
    "quantize_weight",
    "reference",
]
