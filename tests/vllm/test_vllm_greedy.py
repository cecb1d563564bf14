"""vLLM serving an eve folder gives the greedy tokens (and top-5 logprobs) of eve's transformers
model: text, images of different sizes, images mid-text, mixed batches, an image split across
prefill chunks, prefix caching on and off, and every `decoupled` variant."""

import pytest
from vllm_common import TINY, assert_greedy_equal, engine, generate, noise_image, reference


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    return {"wide": noise_image(d / "wide.png", 64, 48, 1), "tall": noise_image(d / "tall.png", 40, 100, 2),
            "square": noise_image(d / "square.png", 96, 96, 3)}


@pytest.fixture(scope="module")
def prompts(images):
    """One batch: text-only rows next to rows with one image, two images of different sizes and an
    image mid-text; two rows share an image prefix (prefix caching)."""
    return [
        {"text": "The quick brown fox jumps over the lazy dog because", "images": []},
        {"text": "<image>What colour is the square in this picture?", "images": [images["wide"]]},
        {"text": "<image><image>Which of the two pictures is brighter?", "images": [images["wide"], images["tall"]]},
        {"text": "Here is a photo: <image> Describe what it shows in detail.", "images": [images["square"]]},
        {"text": "Once upon a time", "images": []},
        {"text": "<image>What colour is the square in this picture? Answer in one word.", "images": [images["wide"]]},
    ]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, prompts):
    """The EVEv2 variant (all modules decoupled), Llama text path, tied embeddings."""
    tmp = tmp_path_factory.mktemp("eve-all")
    folder = str(tmp / "model")
    return folder, reference(tmp, folder, prompts, TINY)


def test_mixed_batch_with_prefix_caching(tiny, prompts):
    folder, references = tiny
    with engine(folder, enable_prefix_caching=True) as llm:
        first = generate(llm, prompts)
        again = generate(llm, prompts)
    assert_greedy_equal(first, references, prompts)
    assert_greedy_equal(again, references, prompts)
    # the second pass reads the image rows of the KV cache instead of recomputing them
    assert again[1].num_cached_tokens >= 32 and again[3].num_cached_tokens >= 32


def test_image_split_across_prefill_chunks_without_prefix_caching(tiny, prompts):
    folder, references = tiny
    # 16-token steps: each image (21-29 tokens) is prefilled over 2-3 steps, beside other rows
    with engine(folder, enable_prefix_caching=False, max_num_batched_tokens=16, max_num_seqs=4) as llm:
        assert_greedy_equal(generate(llm, prompts), references, prompts)


@pytest.mark.parametrize("model", [
    dict(kind="qwen2", decoupled=["ffn"], tie=False, tokenizer="qwen"),
    dict(kind="qwen2", decoupled=[], tie=False),
    dict(kind="llama", decoupled=["attention", "norm"], tie=False),
], ids=["qwen2-ffn-untied-qwen-tokenizer", "qwen2-shared-untied", "llama-attention-norm-untied"])
def test_variants(tmp_path, prompts, model):
    folder = str(tmp_path / "model")
    some = prompts[:4]
    references = reference(tmp_path, folder, some, {**TINY, **model})
    with engine(folder) as llm:
        assert_greedy_equal(generate(llm, some), references, some)


def test_tensor_parallel(tiny, prompts, monkeypatch):
    """Both copies of every decoupled module sharded over 2 ranks give the same greedy tokens."""
    # vLLM's CPU backend binds each rank to its own cores and by default keeps one core for the
    # engine process: on a 2-core machine that leaves one core for two ranks, so bind one each.
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    monkeypatch.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    folder, references = tiny
    with engine(folder, tensor_parallel_size=2) as llm:
        assert_greedy_equal(generate(llm, prompts), references, prompts)
