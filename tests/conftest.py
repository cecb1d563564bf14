import importlib.util
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# lmms-eval is not in the main venv (it needs 2.4 GB of its own): its tests run in `make test-lmms`.
collect_ignore = [] if importlib.util.find_spec("lmms_eval") else ["lmms"]


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def one_thread():
    """The test machines have 2 shared cores: a preempted second intra-op thread stalls every op of
    these tiny models (decoding was ~10x slower with 2 threads than with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
