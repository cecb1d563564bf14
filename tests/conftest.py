import importlib.metadata
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# The vLLM tests run in their own virtualenv (`make test-vllm`): vLLM pins another transformers.
# (Asked of the installed distributions: `import vllm` would find the tests/vllm folder itself.)
collect_ignore = [] if "vllm" in importlib.metadata.packages_distributions() else ["vllm"]


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
