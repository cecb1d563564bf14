"""A toy world for tests, benchmarks and smoke runs: a byte-level tokenizer, a tiny random EVE
model folder and a LLaVA JSONL of coloured rectangles. Nothing is downloaded.

    python -m eve_vlm.train.toy OUT_DIR     # OUT_DIR/model (eve folder), OUT_DIR/data/train.jsonl
"""

import json
import os
import random

import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

from ..model import EveConfig, EveForConditionalGeneration
from ..processing import EveImageProcessor, EveProcessor
from ..processing.chat import IMAGE_MARKER

COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}
SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, pel_hidden_size=32)


def toy_tokenizer() -> PreTrainedTokenizerFast:
    """One token per byte (no merges), plus end-of-text, end-of-turn and the image placeholder."""
    vocab = {c: i for i, c in enumerate(bytes_to_unicode()[b] for b in range(256))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def toy_model(out_dir: str, decoupled=(), seed: int = 0, max_size: int = 64, template: str = "plain",
              **shape) -> str:
    """Save a random tiny EVE model with its processor (a self-contained folder) to `out_dir`."""
    processor = EveProcessor(EveImageProcessor(max_size=max_size, resize_mode="train"), toy_tokenizer(), template)
    tok = processor.tokenizer
    config = EveConfig(**{**SHAPE, **shape}, vocab_size=len(tok), decoupled=list(decoupled),
                       image_token_id=processor.image_token_id, pad_token_id=tok.pad_token_id,
                       eos_token_id=tok.eos_token_id, rope_parameters={"rope_type": "default", "rope_theta": 1e4},
                       max_position_embeddings=4096)
    torch.manual_seed(seed)
    EveForConditionalGeneration(config).save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def toy_data(out_dir: str, n: int = 32, seed: int = 0, chat: bool = False) -> str:
    """`n` records, each a coloured rectangle of random size on a grey background with a caption
    (plain template) or a question about its colour (`chat`). Returns the JSONL path; images are
    in OUT_DIR/images."""
    rng = random.Random(seed)
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    path = os.path.join(out_dir, "train.jsonl")
    with open(path, "w") as f:
        for i in range(n):
            color = rng.choice(list(COLORS))
            w, h = rng.choice((32, 48, 64, 96)), rng.choice((32, 48, 64))
            image = Image.new("RGB", (w, h), (128, 128, 128))
            image.paste(COLORS[color], (w // 4, h // 4, 3 * w // 4, 3 * h // 4))
            image.save(os.path.join(out_dir, "images", f"{i}.png"))
            if chat:
                turns = [{"from": "human", "value": f"{IMAGE_MARKER}\nWhat colour is the box?"},
                         {"from": "gpt", "value": color}]
            else:
                turns = [{"from": "human", "value": IMAGE_MARKER}, {"from": "gpt", "value": f"A {color} box, {w} by {h}."}]
            f.write(json.dumps({"id": f"toy-{i}", "image": f"{i}.png", "conversations": turns}) + "\n")
    return path


if __name__ == "__main__":
    import sys

    out = sys.argv[1]
    print(toy_model(os.path.join(out, "model")), toy_data(os.path.join(out, "data")))
