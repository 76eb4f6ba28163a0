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
