"""Language-forgetting perplexity: the held-out text and the number itself."""

import math

import torch
import torch.nn.functional as F

from eve_vlm.convert.upcycle import upcycle
from eve_vlm.eval.perplexity import heldout_english, perplexity, text_chunks
from eve_vlm.processing.tokenizers import smollm2_tokenizer
from tiny import IMAGE_ID, hf_llm, perturb_vision


def test_heldout_text_is_prose_and_long_enough_for_the_default_windows():
    text = heldout_english()
    assert not any(line[:1].isspace() for line in text.splitlines())  # code and grammar blocks dropped
    assert "assert" in text and "**" not in text.split("\n\n")[0]
    chunks = text_chunks(smollm2_tokenizer(), text)
    assert chunks.shape == (32, 256)
    assert len(set(map(tuple, chunks.tolist()))) == 32


def test_perplexity_is_exp_mean_token_loss_and_ignores_vision_copies():
    llm = hf_llm("qwen2")
    eve = upcycle(llm, image_token_id=IMAGE_ID)[0].eval()
    perturb_vision(eve)  # text-only scoring must not touch them
    chunks = torch.randint(0, IMAGE_ID, (5, 17))
    with torch.no_grad():
        logits = llm(chunks).logits
    ref = math.exp(F.cross_entropy(logits[:, :-1].flatten(0, 1), chunks[:, 1:].flatten()).item())
    assert math.isclose(perplexity(eve, chunks, batch_size=2), ref, rel_tol=1e-5)
