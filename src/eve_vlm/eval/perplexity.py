"""Language forgetting: perplexity of a model on plain English text, text tokens only (no image).

The default held-out text is the Python standard library's own help pages (`pydoc_data.topics`):
several hundred KB of English prose that ships with every Python, so the number is reproducible
offline and is not in easy-VQA or any caption set.
"""

import math

import torch
import torch.nn.functional as F


def heldout_english() -> str:
    """The prose paragraphs of the help pages: indented lines (code, grammar rules, tables) and
    heading underlines are dropped, so what is left reads as ordinary English sentences."""
    from pydoc_data.topics import topics

    paragraphs = []
    for key in sorted(topics):
        for block in topics[key].split("\n\n"):
            lines = [line for line in block.splitlines() if line and not line[0].isspace()]
            if lines and not any(set(line) <= set("*=-") for line in lines):
                paragraphs.append(" ".join(lines))
    return "\n\n".join(paragraphs)


def text_chunks(tokenizer, text: str, num_chunks: int = 32, chunk_tokens: int = 256) -> torch.Tensor:
    """The first `num_chunks` consecutive, non-overlapping windows of `chunk_tokens` tokens."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    need = num_chunks * chunk_tokens
    if len(ids) < need:
        raise ValueError(f"the text has {len(ids)} tokens; {num_chunks} x {chunk_tokens} = {need} are needed")
    return torch.tensor(ids[:need]).view(num_chunks, chunk_tokens)


@torch.no_grad()
def perplexity(model, chunks: torch.Tensor, batch_size: int = 4) -> float:
    """exp of the mean next-token cross-entropy over every chunk (each chunk scored on its own)."""
    model.eval()
    total, count = 0.0, 0
    for batch in chunks.split(batch_size):
        logits = model(input_ids=batch, use_cache=False).logits
        total += F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch[:, 1:].flatten(), reduction="sum").item()
        count += batch[:, 1:].numel()
    return math.exp(total / count)
