import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU")
    config.addinivalue_line("markers", "flashinfer: needs flashinfer-python importable")


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture
def flashinfer():
    try:
        import flashinfer
    except Exception as e:  # ImportError, or a broken install
        pytest.skip(f"flashinfer not importable: {e}")
    return flashinfer


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
