"""Plain helpers shared by the tests (fixtures live in conftest.py): tiny random models and their
inputs, data files and images, subprocesses and servers on 127.0.0.1, training recipes, a scripted
evaluation predictor. Nothing here downloads anything."""

import json
import os

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from eve_vlm import EveForConditionalGeneration

VOCAB = 160
IMAGE_ID = 150
TEXT_SHAPE = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, rope_theta=1e4, max_position_embeddings=2048,
)


def hf_llm(kind: str = "qwen2", tie: bool = False):
    if kind == "qwen2":
        llm = Qwen2ForCausalLM(Qwen2Config(**TEXT_SHAPE, tie_word_embeddings=tie))
        with torch.no_grad():  # HF inits biases to zero; random ones make the parity test bite
            for layer in llm.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(std=0.1)
    else:
        llm = LlamaForCausalLM(LlamaConfig(**TEXT_SHAPE, tie_word_embeddings=tie))
    return llm.eval()


def perturb_vision(model: EveForConditionalGeneration, std: float = 0.05) -> None:
    """Move every vision copy away from the text weights so a routing error shows."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".vision_" in name:
                p.add_(torch.randn_like(p) * std)


def tiny_eve(decoupled=("attention", "norm", "ffn"), kind: str = "qwen2", **overrides) -> EveForConditionalGeneration:
    model = EveForConditionalGeneration.from_llm(
        hf_llm(kind), image_token_id=IMAGE_ID, decoupled=list(decoupled), pel_hidden_size=32, **overrides
    )
    perturb_vision(model)
    return model.eval()


def image(h: int, w: int) -> torch.Tensor:
    return torch.randn(3, h, w)


def text(n: int) -> torch.Tensor:
    return torch.randint(0, IMAGE_ID, (n,))


def row(model, *pieces) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Build one sequence from ints (n random text tokens) and images (expanded placeholders)."""
    ids, imgs = [], []
    for p in pieces:
        if isinstance(p, int):
            ids.append(text(p))
        else:
            imgs.append(p)
            n = model.model.patch_embed.num_tokens(p.shape[1], p.shape[2])
            ids.append(torch.full((n,), IMAGE_ID))
    return torch.cat(ids), imgs


def pad(rows: list[torch.Tensor], side: str = "right", pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(0, len(r)) if side == "right" else slice(length - len(r), length)
        ids[i, sl], mask[i, sl] = r, 1
    return ids, mask


# ---- data files ------------------------------------------------------------------------------

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "bad_data")


def write_jsonl(path, rows) -> str:
    """Rows (dicts, or raw strings for broken lines) as a JSONL file."""
    with open(path, "w") as f:
        f.writelines((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)
    return str(path)


def text_record(i: int, words: int = 3) -> dict:
    return {"id": f"r{i}", "conversations": [{"from": "human", "value": f"question {i}"},
                                             {"from": "gpt", "value": " ".join(["answer"] * words)}]}
