"""Helpers of the lmms-eval tests. These tests need lmms-eval, which lives in a venv of its own:
`make test-lmms` builds `.venv-lmms` and runs this folder there; the main suite skips it
(tests/conftest.py)."""

import torch

from eve_vlm.infer.predictors import user_message
from eve_vlm.infer import encode


def token_ids(processor, text: str) -> list[int]:
    return processor.tokenizer(text, add_special_tokens=False)["input_ids"]


def continuation_logprobs(model, processor, question: str, image: str, continuation: str) -> torch.Tensor:
    """Log-softmax rows that predict each token of `continuation` (tokenized on its own) after the
    one-turn prompt `eve eval` builds for (image, question): one plain forward pass."""
    prompt = encode(processor, user_message(question, {"type": "image"}), [image])
    target = token_ids(processor, continuation)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt.input_ids + target]), pixel_values=prompt.pixel_values).logits
    return logits[0, len(prompt.input_ids) - 1:-1].float().log_softmax(-1)


def mean_loss(model, processor, question: str, image: str, continuation: str) -> float:
    logp = continuation_logprobs(model, processor, question, image, continuation)
    return -logp.gather(-1, torch.tensor(token_ids(processor, continuation))[:, None]).mean().item()
