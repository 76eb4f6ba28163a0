"""Run the project's Triton kernels on CPU tensors through Triton's interpreter.

`triton.jit` decides at decoration time whether a function is compiled or interpreted
(TRITON_INTERPRET). To serve CPU and GPU tensors from one process without the user exporting
anything, each kernel module is imported a second time with the interpret knob on; that copy's
kernels (and the helpers they call) are InterpretedFunctions that accept CPU tensors.
"""

import importlib.util
import sys

from triton import knobs

_copies = {}


def interpreted(module):
    """The interpreted twin of an already imported kernel module."""
    name = module.__name__ + "._interpreted"
    if name not in _copies:
        spec = importlib.util.spec_from_file_location(name, module.__file__)
        twin = importlib.util.module_from_spec(spec)
        with knobs.runtime.scope():
            knobs.runtime.interpret = True
            spec.loader.exec_module(twin)
        sys.modules[name] = twin
        _copies[name] = twin
    return _copies[name]


def for_device(module, device):
    """`module` itself for GPU tensors, its interpreted twin for CPU tensors."""
    if device.type == "cpu" and not knobs.runtime.interpret:
        return interpreted(module)
    return module


__all__ = ["for_device", "interpreted"]
