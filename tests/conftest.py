"""Shared fixtures and helpers of the test suite.

Every test that needs a GPU carries the `cuda` marker (tests parametrized over `device` get it on
their cuda case automatically) and is skipped where there is none: `pytest -m cuda` runs them all
on a GPU machine.
"""

import pytest
import torch

import fp4linear
from fp4linear import reference

HAVE_CUDA = torch.cuda.is_available()


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "flashinfer: needs flashinfer-python importable")


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not HAVE_CUDA:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Every test starts with torch.compile's caches empty. Compiled code is cached per code object,
    and every fp4linear forward runs through the one `ops.on_device_of` wrapper, so the compile tests
    of one file (other modules, shapes, dtypes) would use up the recompile limit (8) of the next file's
    (a `fullgraph=True` test then fails: found running test_gated_mlp before test_linear on the H100)."""
    torch._dynamo.reset()
    yield


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request):
    return torch.device(request.param)


@pytest.fixture
def flashinfer():
    try:
        import flashinfer
    except Exception as e:  # ImportError, or a broken install
        pytest.skip(f"flashinfer not importable: {e}")
    return flashinfer


# ---- data ---------------------------------------------------------------------------------


def wide_range(shape, *, binades=12, dtype=torch.bfloat16, device="cpu", generator=None):
    """Random values whose magnitudes span `binades` powers of two within every row."""
    mant = torch.rand(shape, generator=generator) + 0.5
    exp = torch.randint(-binades // 2, binades - binades // 2, shape, generator=generator).float()
    sign = torch.where(torch.rand(shape, generator=generator) < 0.5, -1.0, 1.0)
    return (sign * mant * torch.exp2(exp)).to(dtype).to(device)


def global_scale_of(x):
    """The encode scale 2688 / amax(x) (fp32 [1], on x's device)."""
    return fp4linear.encode_scale(x.float().abs().amax())


def poisoned(shape, k_align, sf_layout, device):
    """NVFP4 output buffers filled with 0xFF: a kernel must overwrite every byte."""
    out = fp4linear.NVFP4Tensor.empty(shape, k_align=k_align, sf_layout=sf_layout, device=device)
    out.data.fill_(0xFF)
    out.scale.view(torch.uint8).fill_(0xFF)
    return out


def assert_same_bits(q, r):
    assert q.shape == r.shape and q.kp == r.kp
    assert q.data.dtype == torch.uint8 and q.scale.dtype == torch.float8_e4m3fn
    assert torch.equal(q.data.cpu(), r.data), "packed data differs from the reference"
    assert torch.equal(q.scale.view(torch.uint8).cpu(), r.scale.view(torch.uint8)), "scales differ from the reference"


def rel_err(out, ref):
    return ((out.double().cpu() - ref.double().cpu()).norm() / ref.double().cpu().norm()).item()


# ---- checkpoints ----------------------------------------------------------------------------


def without_host_sync(fn, times: int = 1) -> list:
    """fn() called `times` times with torch's sync debug mode set to raise on any host sync (a
    forward path must not sync): the results."""
    torch.cuda.set_sync_debug_mode("error")
    try:
        return [fn() for _ in range(times)]
    finally:
        torch.cuda.set_sync_debug_mode("default")


def as_graph_replay(fn, x):
    """fn(x) as a CUDA graph replay computes it (a copy). That is the routing torch.compile'd code
    takes too: an eager call of a small layer past 16 rows takes the host-bound route instead
    (`fp4linear.ops.eager_route`: the Triton GEMM where graphs and compiled code take cuBLAS), whose
    sums run in another order, so compiled code is compared with this, not with the eager call."""
    fn(x)  # warm-up outside the capture (kernels compiled, cuBLAS initialized)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = fn(x)
    graph.replay()
    torch.cuda.synchronize()
    return y.clone()


def free_port() -> int:
    """A free local TCP port for a gloo process group's rendezvous."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def modelopt_checkpoint(n, k, *, seed=0, bias=False):
    """Tensors as a ModelOpt NVFP4 export stores them (made with the reference recipe), and the
    reference NVFP4Tensor of the weight."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    gs_w = global_scale_of(w)
    q = reference.quantize(w, gs_w, k_align=16)
    scale = reference.unswizzle(q.scale.view(torch.uint8), q.sf_layout)[:n, : -(-k // 16)].contiguous()
    ckpt = dict(weight=q.data, weight_scale=scale.view(torch.float8_e4m3fn), weight_scale_2=(1 / gs_w).reshape(()),
                input_scale=fp4linear.decode_scale(torch.tensor(3.0)).reshape(()))
    if bias:
        ckpt["bias"] = torch.randn(n, generator=g).to(torch.bfloat16)
    return ckpt, q


def emulate(x, ckpt, q):
    """fp64: reference quantize of x (gs = 1 / input_scale) times the dequantized checkpoint weight."""
    k = x.shape[-1]
    qx = reference.quantize(x.cpu(), (1 / ckpt["input_scale"].float()).reshape(1), k_align=16)
    out = reference.dequantize(qx).double().reshape(-1, k) @ reference.dequantize(q).double().T
    if "bias" in ckpt:
        out = out + ckpt["bias"].double()
    return out.reshape(*x.shape[:-1], -1)


# Real checkpoints, made once per session on the CPU (tests/checkpoints.py).
@pytest.fixture(scope="session")
def modelopt_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    pytest.importorskip("modelopt.torch.quantization")
    from tests.checkpoints import make_modelopt, tiny_config

    return make_modelopt(tmp_path_factory.mktemp("modelopt_nvfp4"), tiny_config())


@pytest.fixture(scope="session")
def compressed_tensors_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    pytest.importorskip("llmcompressor")
    from tests.checkpoints import make_compressed_tensors, tiny_config

    return make_compressed_tensors(tmp_path_factory.mktemp("ct_nvfp4") / "ckpt", tiny_config())


@pytest.fixture(params=["modelopt", "compressed-tensors"])
def checkpoint_dir(request):
    """Each format's checkpoint of the same tiny Llama."""
    return request.getfixturevalue("modelopt_dir" if request.param == "modelopt" else "compressed_tensors_dir")
