"""Launch a compiled Triton kernel without the JIT's per-call dispatch.

`kernel[grid](*args)` binds and specializes every argument and looks the compiled kernel up on
each call: tens of microseconds of host time, more than a decode-sized kernel runs. A
`CachedLaunch` goes through the JIT once per key (compiling if needed) and afterwards calls the
compiled kernel's runner directly. The caller's key must determine everything Triton specializes
on: dtypes, integer arguments that are not `do_not_specialize`, and pointer alignment where not
`do_not_specialize_on_alignment` (fp4linear passes only its own, freshly allocated buffers there).
"""

from __future__ import annotations

import contextlib

_compile_tracing = False
ENABLED = True  # False: every launch through the JIT (tests compare the two)


@contextlib.contextmanager
def wrapped_for_compile():
    """Inside a `torch.library.triton_op`: launch through `torch.library.wrap_triton`, so that
    torch.compile records the kernels (fresh scratch buffers too: see `workspace.scratch`)."""
    global _compile_tracing
    saved, _compile_tracing = _compile_tracing, True
    try:
        yield
    finally:
        _compile_tracing = saved


def compile_tracing() -> bool:
    return _compile_tracing


def alignment_key(t) -> tuple:
    """What Triton specializes on for a tensor argument whose pointer and row stride are not
    excluded from specialization: 16-byte alignment of the pointer, and the row stride's % 16 / == 1.
    (Nothing while torch.compile traces: fake tensors have no address, and no key is needed.)"""
    if _compile_tracing:
        return ()
    stride = t.stride(0)
    return t.data_ptr() % 16 == 0, stride % 16 == 0, stride == 1


class CachedLaunch:
    def __init__(self, kernel):
        self.kernel = kernel
        self._runners = {}
        self._constexpr_names = [kernel.arg_names[i] for i in kernel.constexprs]

    def __call__(self, key, grid, args: tuple, constexprs: dict, options: dict) -> None:
        """Launch kernel[grid](*args, **constexprs, **options); `args` are the kernel's leading,
        non-constexpr parameters in order, its constexpr parameters all follow them and all are
        given in `constexprs`."""
        if _compile_tracing:
            import torch

            # Inductor launches the kernel with its own compile options; fp4linear's kernels do not
            # depend on enable_fp_fusion=False (no multiply feeds an add directly in the recipe).
            options = {k: v for k, v in options.items() if k in ("num_warps", "num_stages")}
            torch.library.wrap_triton(self.kernel)[grid](*args, **constexprs, **options)
            return
        entry = self._runners.get(key) if ENABLED else None
        if entry is not None:
            compiled, tail = entry
            compiled[(*grid, 1, 1)[:3]](*args, *tail)  # the compiled kernel's runner reads all three
            return
        compiled = self.kernel[grid](*args, **constexprs, **options)
        self._runners[key] = (compiled, tuple(constexprs[name] for name in self._constexpr_names))
