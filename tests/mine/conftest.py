import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Every number these tests compare bit for bit comes from one thread (as under torchrun)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def lens():
    import zfwidgets as zf
    return zf.load("zfnet-fashion")
