"""Run the project's Triton kernels on CPU tensors through Triton's interpreter.

`triton.jit` decides at decoration time whether a function is compiled or interpreted
(TRITON_INTERPRET). To serve CPU and GPU tensors from one process without the user exporting
anything, each kernel module is imported a second time with the interpret knob on; that copy's
kernels (and the helpers they call) are InterpretedFunctions that accept CPU tensors.
"""

import importlib.util
import inspect
import sys

from triton import knobs

_copies = {}
TWIN_PREFIX = "_interpreted_"


def _index_size1_arrays() -> None:
    """Triton <= 3.6's interpreter turns a runtime loop bound into `int(ndarray of shape (1,))`,
    which NumPy >= 2.4 refuses (the expired ndim > 0 conversion); later Triton squeezes first.
    On an interpreter with the old line, override it the way that version patches (3.6: a scope
    restored last-in first-out; 3.5: a plain attribute, as its own patch is)."""
    from triton.runtime import interpreter

    patch = getattr(interpreter, "_patch_lang_tensor", None)
    if patch is None or getattr(patch, "fp4linear_shim", False):
        return
    try:
        if "int(self.handle.data)" not in inspect.getsource(patch):
            return
    except OSError:
        return

    def index(self):
        return int(self.handle.data.item())

    def patch_lang_tensor(tensor, *scope):
        patch(tensor, *scope)
        if scope:
            scope[0].set_attr(tensor, "__index__", index)
        else:
            tensor.__index__ = index

    patch_lang_tensor.fp4linear_shim = True
    interpreter._patch_lang_tensor = patch_lang_tensor


def interpreted(module):
    """The interpreted twin of an already imported kernel module (named `<package>._interpreted_<name>`,
    so that its relative imports resolve in the same package)."""
    package, _, base = module.__name__.rpartition(".")
    name = f"{package}.{TWIN_PREFIX}{base}"
    if name not in _copies:
        _index_size1_arrays()
        spec = importlib.util.spec_from_file_location(name, module.__file__)
        twin = importlib.util.module_from_spec(spec)
        with knobs.runtime.scope():
            knobs.runtime.interpret = True
            spec.loader.exec_module(twin)
        sys.modules[name] = twin
        _copies[name] = twin
    return _copies[name]


def sibling(caller: str, name: str):
    """Kernel module `name` of the caller's package, as the caller sees it: a kernel module that
    calls another module's @triton.jit helpers imports it with `sibling(__name__, "layout")`, so
    that its interpreted twin calls the interpreted twins of those helpers."""
    package, _, base = caller.rpartition(".")
    module = importlib.import_module(f"{package}.{name}")
    return interpreted(module) if base.startswith(TWIN_PREFIX) else module


def for_device(module, device):
    """`module` itself for GPU tensors, its interpreted twin for CPU tensors."""
    if device.type == "cpu" and not knobs.runtime.interpret:
        return interpreted(module)
    return module


__all__ = ["for_device", "interpreted", "sibling"]
