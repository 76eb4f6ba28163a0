"""Launch a compiled Triton kernel without the JIT's per-call dispatch.

`kernel[grid](*args)` binds and specializes every argument and looks the compiled kernel up on
each call: tens of microseconds of host time, more than a decode-sized kernel runs. A
`CachedLaunch` goes through the JIT once per key (compiling if needed) and afterwards launches the
compiled kernel directly. The caller's key must determine everything Triton specializes on:
dtypes, integer arguments that are not `do_not_specialize` (== 1, % 16, 32/64 bits), and pointer
alignment where not `do_not_specialize_on_alignment` (fp4linear passes only its own, freshly
allocated buffers there, or puts the alignment in the key: `alignment_key`, `int_key`).

Two ways to launch an already compiled kernel (H100, benchmarks/host_overhead.py):
- `STATIC` (default): torch's C++ launcher for Triton kernels, the one Inductor uses
  (`torch._C._StaticCudaLauncher._launch_kernel`): one C call with the kernel's function handle,
  launch dimensions, the argument type string and the arguments Triton keeps (constexprs, None
  and specialized-to-1 integers dropped), on torch's current raw stream. Skips Triton's Python
  runner (driver and stream look-ups, launch-metadata and hook plumbing on every call).
- the compiled kernel's runner, `compiled[grid](*args, *constexprs)` (Triton's own launcher):
  used wherever the static launcher cannot reproduce Triton's launch exactly (`_static_plan` says
  why, logged at debug level per key), when `STATIC` is False, while a Triton launch hook is set
  (profilers such as proton rely on them), and when the current device is not the one the kernel
  was loaded for.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import operator

import torch
from triton import knobs

log = logging.getLogger(__name__)

_compile_tracing = False
ENABLED = True  # False: every launch through the JIT (tests compare the two)
STATIC = True  # False: cached launches through Triton's runner instead of torch's static launcher
# Tensors reach the static launcher as their addresses (ints): given a tensor it looks `data_ptr` up
# through Python and asks the driver whether the address is a device pointer, for every tensor
# argument of every launch. The key's first launch still passes the tensors (that check, once).
INT_POINTERS = True

_runtime = knobs.runtime
_HookChain = getattr(knobs, "HookChain", None)  # Triton >= 3.5 keeps hooks in (possibly empty) chains
_launcher = getattr(torch._C, "_StaticCudaLauncher", None)
_static_launch = getattr(_launcher, "_launch_kernel", None)
_get_device = getattr(torch._C, "_cuda_getDevice", None)  # torch.cuda.current_device() without the Python
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)  # the current stream's handle, by device
# Triton signature type -> the static launcher's argument code (its own table, less fp16 / bf16
# scalars: Triton passes those as 2-byte values, the static launcher would pass a float).
_TYPE_CODES = {"i1": "i", "i8": "b", "i16": "h", "i32": "i", "i64": "l", "u1": "I", "u8": "B", "u16": "H",
               "u32": "I", "u64": "K", "fp32": "f", "f32": "f", "fp64": "d"}


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


@functools.lru_cache(maxsize=None)
def sm_count(device: torch.device) -> int:
    """SMs of a CUDA device (1 for the CPU)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def cdiv(a, b):
    """ceil(a / b) for ints (and SymInts): `triton.cdiv` is a ConstexprFunction, whose call costs
    ~1.5 us of host time, as much as a tenth of a decode-sized launch."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The least power of two >= n (n >= 1), for per-call host code: `triton.next_power_of_2` is a
    ConstexprFunction too (~1.5 us a call)."""
    return 1 << (n - 1).bit_length()


def x_multiples(k: int, stride: int, m: int) -> tuple[int, int]:
    """(K's, x's row stride's) largest power-of-two divisor up to 16 (the stride's counts as 16 for one row),
    for a kernel reading x [m, k]. Triton specializes an integer argument on % 16 only, so at K = 1368 or 232
    (per-rank intermediate sizes) it knows nothing of K and the stride, and loads x two bytes at a time (masks
    not constant per vector, rows of unknown alignment): about 2x the device time of K = 1376 on the H100.
    Kernels take them as K // k_mult (quantize, act_quantize) or one `x_align` constexpr (`numerics.aligned`)."""
    return math.gcd(k, 16), (math.gcd(stride, 16) if m > 1 else 16)


def x_align(k, stride) -> int:
    """What K and x's row stride are both multiples of (`x_multiples` of more than one row): a kernel's
    X_ALIGN constexpr. 1 where either is not a plain int (symbolic while torch.compile traces: no guard)."""
    if type(k) is not int or type(stride) is not int:
        return 1
    return math.gcd(k, stride, 16)


def alignment_key(t) -> tuple:
    """What Triton specializes on for a tensor argument whose pointer and row stride are not
    excluded from specialization: 16-byte alignment of the pointer, and the row stride's % 16 / == 1.
    (Nothing while torch.compile traces: fake tensors have no address, and no key is needed.)"""
    if _compile_tracing:
        return ()
    stride = t.stride(0)
    return t.data_ptr() % 16 == 0, stride % 16 == 0, stride == 1


def int_key(v: int) -> int:
    """What Triton specializes on for a specialized integer argument: == 1 (a constexpr), % 16 == 0,
    and whether it needs 64 bits."""
    return (v == 1) | ((v % 16 == 0) << 1) | ((not -2**31 <= v < 2**31) << 2)


def _hooks_empty() -> bool:
    """No Triton launch hook set (an empty hook chain counts as none): checked on every launch,
    since a profiler may set one at any time."""
    enter, exit_ = _runtime.launch_enter_hook, _runtime.launch_exit_hook
    return ((enter is None or (enter.__class__ is _HookChain and not enter.calls))
            and (exit_ is None or (exit_.__class__ is _HookChain and not exit_.calls)))


class _Entry:
    """One key's compiled kernel: its runner's pieces and, where possible, its static launch."""

    __slots__ = ("compiled", "tail", "function", "device", "num_warps", "shared", "arg_tys", "pick", "extra",
                 "pointers", "checked")

    def __init__(self, compiled, tail):
        self.compiled, self.tail = compiled, tail
        self.function = None  # None: the runner only
        self.device = -1
        self.pick, self.extra = None, ()
        self.pointers = ()  # positions of the tensor arguments among those the compiled kernel takes
        self.checked = False


class CachedLaunch:
    def __init__(self, kernel, views: dict | None = None):
        """`views`: {argument index: (dtype, as_dtype)}: a tensor argument of `dtype` that the kernel
        reads as `as_dtype` (an int32 view of a uint8 weight, say). Only the JIT (which specializes
        on the pointer's type) needs the view; launches by pointer take the tensor as it is, which
        saves making a view on every call."""
        self.kernel = kernel
        self._entries = {}
        self._constexpr_names = [kernel.arg_names[i] for i in kernel.constexprs]
        self._views = tuple((i, dt, as_dt) for i, (dt, as_dt) in sorted((views or {}).items()))

    def jit_args(self, args: tuple) -> tuple:
        """`args` as the kernel itself must see them (the `views` applied): for a JIT or
        interpreter launch of the kernel outside this class."""
        if not self._views:
            return args
        out = list(args)
        for i, dt, as_dt in self._views:
            if out[i].dtype == dt:
                out[i] = out[i].view(as_dt)
        return tuple(out)

    def __call__(self, key, grid, args: tuple, constexprs: dict, options: dict) -> None:
        """Launch kernel[grid](*args, **constexprs, **options); `args` are the kernel's leading,
        non-constexpr parameters in order, its constexpr parameters all follow them and all are
        given in `constexprs`."""
        if _compile_tracing:
            # Inductor launches the kernel with its own compile options; fp4linear's kernels do not
            # depend on enable_fp_fusion=False (no multiply feeds an add directly in the recipe).
            options = {k: v for k, v in options.items() if k in ("num_warps", "num_stages")}
            torch.library.wrap_triton(self.kernel)[grid](*self.jit_args(args), **constexprs, **options)
            return
        entry = self._entries.get(key) if ENABLED else None
        if entry is None:
            compiled = self.kernel[grid](*self.jit_args(args), **constexprs, **options)
            if ENABLED and hasattr(compiled, "metadata"):  # (an interpreted kernel returns nothing to keep)
                self._entries[key] = self._entry(key, compiled, args, constexprs)
            return
        if len(grid) != 3:
            grid = (*grid, 1, 1)[:3]  # both launchers take all three
        if entry.function is not None and STATIC and _get_device() == entry.device and _hooks_empty():
            kernel_args = args if entry.pick is None else entry.pick(args)
            if entry.extra:
                kernel_args = kernel_args + entry.extra
            if not entry.checked:
                return self._first_static(entry, grid, args, kernel_args)
            if INT_POINTERS:
                kernel_args = list(kernel_args)
                for i in entry.pointers:
                    kernel_args[i] = kernel_args[i].data_ptr()
                kernel_args = tuple(kernel_args)
            _static_launch(entry.function, grid[0], grid[1], grid[2], entry.num_warps, entry.shared, entry.arg_tys,
                           kernel_args, _raw_stream(entry.device))
            return
        entry.compiled[grid](*args, *entry.tail)

    def _entry(self, key, compiled, args, constexprs) -> _Entry:
        entry = _Entry(compiled, tuple(constexprs[name] for name in self._constexpr_names))
        plan, why = _static_plan(compiled, len(args))
        if plan is not None:
            entry.function, entry.num_warps, entry.shared, entry.arg_tys, keep, entry.extra = plan
            entry.pointers = tuple(i for i, code in enumerate(entry.arg_tys[:len(keep)]) if code == "O")
            entry.device = torch.cuda.current_device()  # the device Triton loaded the function for
            # Which arguments the compiled kernel takes: all of them, or a C-level picker.
            if len(keep) == len(args):
                entry.pick = None
            elif len(keep) == 1:
                entry.pick = lambda a, i=keep[0]: (a[i],)
            else:
                entry.pick = operator.itemgetter(*keep)
        log.debug("%s %s: %s", self.kernel.fn.__name__, key,
                  "torch's static launcher" if plan is not None else f"Triton's runner ({why})")
        return entry

    def _first_static(self, entry, grid, args, kernel_args) -> None:
        """The key's first static launch: should this torch's launcher refuse it (an argument it
        cannot convert, say: nothing is launched then), the key keeps to Triton's runner."""
        entry.checked = True
        try:
            _static_launch(entry.function, grid[0], grid[1], grid[2], entry.num_warps, entry.shared, entry.arg_tys,
                           kernel_args, _raw_stream(entry.device))
        except (TypeError, ValueError, RuntimeError) as e:
            try:
                entry.compiled[grid](*args, *entry.tail)
            except Exception:
                entry.checked = False  # Triton's launcher refuses the arguments too: the caller's error
                raise
            log.warning("%s: torch's static launcher refused the launch (%s); using Triton's runner",
                        self.kernel.fn.__name__, e)
            entry.function = None


def _static_plan(compiled, n_args: int):
    """(function, num_warps, shared, arg_tys, kept argument indices, extra arguments), or None and
    why the static launcher cannot launch `compiled` exactly as Triton's launcher would: it has
    no launch attributes (clusters, cooperative grids, PDL), no tensor descriptors, no fp16
    scalars, no scratch memory, and runs CUDA only."""
    if _static_launch is None or _get_device is None or _raw_stream is None:
        return None, "no torch._C._StaticCudaLauncher in this torch"
    if torch.version.hip is not None:
        return None, "ROCm"
    md = compiled.metadata
    target = getattr(md, "target", None)
    if getattr(target, "backend", "cuda") != "cuda":
        return None, f"backend {target.backend}"
    if getattr(md, "num_ctas", 1) != 1 or any(d != 1 for d in getattr(md, "cluster_dims", None) or ()):
        return None, "clusters"
    for attr in ("launch_cooperative_grid", "launch_pdl", "instrumentation_mode", "tensordesc_meta"):
        if getattr(md, attr, None):
            return None, attr
    function = getattr(compiled, "function", None)
    if not function:
        return None, "no loaded function"
    src = compiled.src
    fn = getattr(src, "fn", None)
    if fn is None:
        return None, "not compiled from a @triton.jit function"
    names = list(fn.arg_names)

    def index(key):  # signature / constants keys: names (Triton >= 3.3), (index,) tuples or indices
        if isinstance(key, str):
            return names.index(key)
        return key[0] if isinstance(key, tuple) else key

    signature = {index(k): v for k, v in src.signature.items()}
    constants = {index(k) for k in getattr(src, "constants", {})}
    arg_tys, keep = [], []
    for i in range(len(names)):
        ty = signature.get(i)
        if ty is None:
            return None, f"no signature entry for {names[i]}"
        if ty == "constexpr" or i in constants:
            continue  # the compiled kernel has no parameter for it
        if i >= n_args:
            return None, f"{names[i]} ({ty}) is not among the launch's arguments"
        code = "O" if isinstance(ty, str) and ty.startswith("*") else _TYPE_CODES.get(ty)
        if code is None:
            return None, f"argument {names[i]} of type {ty}"
        arg_tys.append(code)
        keep.append(i)
    extra = ()
    # Triton appends scratch-memory pointers to the kernel's parameters (global scratch from
    # Triton 3.3, profile scratch from 3.5): null where the kernel needs none, as Triton passes.
    for attr in ("global_scratch_size", "profile_scratch_size"):
        if hasattr(md, attr):
            if getattr(md, attr) > 0:
                return None, f"{attr} > 0"
            arg_tys.append("O")
            extra += (None,)
    return (function, md.num_warps, md.shared, "".join(arg_tys), tuple(keep), extra), ""
