"""Greedy references from eve's transformers model for the vLLM tests.

vLLM pins an older transformers than eve's model needs, so this runs in the main virtualenv:
`python reference.py SPEC.json OUT.json`. SPEC: {"folder", "model": save_tiny_model's keyword
arguments, "smollm2" (the real SmolLM2 upcycled) or null (the folder exists), "max_tokens", "top",
"prompts": [{"text", "images": [paths]}]}.
OUT: one {"prompt_ids", "token_ids", "top_logprobs": [{id: logprob}] per step} per prompt.
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def greedy(model, processor, text: str, images: list[str], max_tokens: int, top: int) -> dict:
    enc = processor(text=text, images=images or None)
    ids = enc["input_ids"][0]
    out = model(input_ids=ids[None], pixel_values=enc["pixel_values"] or None, use_cache=True)
    tokens, tops = [], []
    for _ in range(max_tokens):
        logprobs = out.logits[0, -1].float().log_softmax(-1)
        best = logprobs.topk(top)
        tokens.append(int(best.indices[0]))
        tops.append({int(i): float(v) for i, v in zip(best.indices, best.values)})
        out = model(input_ids=best.indices[:1].view(1, 1), cache=out.cache, use_cache=True)
    return {"prompt_ids": ids.tolist(), "token_ids": tokens, "top_logprobs": tops}


def main(spec_path: str, out_path: str) -> None:
    from eve_vlm.infer import load
    from tiny import save_smollm2_model, save_tiny_model

    with open(spec_path) as f:
        spec = json.load(f)
    if spec["model"] == "smollm2":
        save_smollm2_model(spec["folder"])
    elif spec["model"] is not None:
        save_tiny_model(spec["folder"], **spec["model"])
    torch.set_num_threads(1)
    model, processor = load(spec["folder"], device="cpu")
    with torch.inference_mode():
        out = [greedy(model, processor, p["text"], p["images"], spec["max_tokens"], spec["top"])
               for p in spec["prompts"]]
    with open(out_path, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
