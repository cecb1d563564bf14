"""The real SmolLM2-135M-Instruct upcycled to EVEv2 on vLLM: eve's greedy answers to easy-VQA
questions (real images, the folder's chat template)."""

import pytest
from vllm_common import assert_greedy_equal, engine, generate, reference

pytestmark = pytest.mark.slow


def test_easyvqa_questions_match_eve(tmp_path):
    import easy_vqa
    from transformers import AutoTokenizer

    folder = str(tmp_path / "model")
    questions, _, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    picked = range(0, 40, 8)
    prompts = [{"text": f"<image>\n{questions[i]}", "images": [paths[image_ids[i]]]} for i in picked]
    reference(tmp_path, folder, [], "smollm2")  # builds the folder, whose tokenizer renders the chat
    tokenizer = AutoTokenizer.from_pretrained(folder)
    for p in prompts:
        p["text"] = tokenizer.apply_chat_template([{"role": "user", "content": p["text"]}], tokenize=False,
                                                  add_generation_prompt=True)
    references = reference(tmp_path, folder, prompts, None)
    with engine(folder) as llm:
        assert_greedy_equal(generate(llm, prompts), references, prompts)
