"""Helpers of the vLLM tests: they run in the vLLM virtualenv (`make test-vllm`); the greedy
references come from eve's transformers model in the main one (`reference.py`)."""

import contextlib
import json
import os
import subprocess

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's default (4) is more than the tests need
os.environ.setdefault("VLLM_PLUGINS", "eve")  # only our plugin, whatever else is installed

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
REFERENCE_PYTHON = os.environ.get("EVE_REFERENCE_PYTHON", os.path.join(ROOT, ".venv", "bin", "python"))
MAX_TOKENS, TOP = 8, 5
# vLLM's CPU attention takes head sizes 32, 64, 80, ...: 128 wide / 4 heads. Images at a 128²
# budget: 20-30 tokens each, so an image spans several KV blocks and prefill chunks.
TINY = dict(hidden_size=128, max_size=128, perturb=0.3)


def noise_image(path, width: int, height: int, seed: int) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


def reference(tmp_path, folder: str, prompts: list[dict], model: dict | None) -> list[dict]:
    """Greedy token ids and top logprobs of eve's transformers model, one per prompt; `model`:
    `save_tiny_model` arguments to build the folder first."""
    if not os.path.isfile(REFERENCE_PYTHON):
        pytest.fail(f"no Python with eve's own dependencies at {REFERENCE_PYTHON}: run `make setup` or set "
                    "EVE_REFERENCE_PYTHON")
    spec, out = tmp_path / "spec.json", tmp_path / "reference.json"
    spec.write_text(json.dumps({"folder": folder, "model": model, "max_tokens": MAX_TOKENS, "top": TOP,
                                "prompts": prompts}))
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "src"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    subprocess.run([REFERENCE_PYTHON, os.path.join(HERE, "reference.py"), str(spec), str(out)], env=env,
                   check=True, cwd=ROOT)
    return json.loads(out.read_text())


@contextlib.contextmanager
def engine(folder: str, **kwargs):
    """A vLLM engine on `folder` (fp32, eager, the CPU backend's preferred 32-token KV blocks)."""
    from vllm import LLM

    llm = LLM(folder, dtype="float32", enforce_eager=True, max_model_len=1024, block_size=32, seed=0, **kwargs)
    try:
        yield llm
    finally:
        llm.llm_engine.engine_core.shutdown()


def generate(llm, prompts: list[dict]) -> list:
    from vllm import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, logprobs=TOP, ignore_eos=True)
    requests = [{"prompt": p["text"], "multi_modal_data": {"image": [Image.open(i) for i in p["images"]]}}
                if p["images"] else {"prompt": p["text"]} for p in prompts]
    return llm.generate(requests, params, use_tqdm=False)


def assert_greedy_equal(outputs: list, references: list[dict], prompts: list[dict], atol: float = 2e-3) -> None:
    """Same prompt ids (placeholders expanded alike), same greedy tokens, and every top-k logprob
    the two sides share within `atol`."""
    for out, ref, prompt in zip(outputs, references, prompts, strict=True):
        where = f"prompt {prompt['text']!r} with {len(prompt['images'])} image(s)"
        assert list(out.prompt_token_ids) == ref["prompt_ids"], f"{where}: vLLM's prompt ids differ from eve's"
        got = out.outputs[0]
        assert list(got.token_ids) == ref["token_ids"], f"{where}: greedy tokens differ"
        for step, (theirs, ours) in enumerate(zip(got.logprobs, ref["top_logprobs"])):
            for token, logprob in ours.items():
                if int(token) in theirs:
                    assert abs(theirs[int(token)].logprob - logprob) < atol, f"{where}, step {step}, token {token}"
