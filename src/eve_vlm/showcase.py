"""Show the model: upcycle SmolLM2-135M offline, print its parameters, run a real photo through it.

`python -m eve_vlm.showcase` — no training here, so the PEL is random and the answer shows the
plumbing (token layout, routing, generation), not vision.
"""

import time

import torch
from rich.console import Console

from .assets import sample_photo, smollm2_gguf
from .convert.upcycle import upcycle
from .model.groups import parameter_table
from .processing import EveImageProcessor, EveProcessor
from .processing.chat import image_part, text_part

console = Console(width=110)


def token_layout(input_ids: torch.Tensor, image_token_id: int, image_sizes, tokenizer) -> list[str]:
    """One line per text span / image block, with positions and the image's grid."""
    visual = (input_ids == image_token_id).tolist()
    lines, start, images = [], 0, iter(image_sizes)
    for i in range(1, len(visual) + 1):
        if i == len(visual) or visual[i] != visual[start]:
            if visual[start]:
                n_left = i - start
                while n_left > 0:  # adjacent images share one run of placeholders
                    h, w = next(images)
                    rows, cols = h // 32, w // 32
                    n = 1 + rows * (cols + 1)
                    lines.append(f"[{i - n_left:>5}, {i - n_left + n:>5})  image {h}x{w}px: {n} tokens = "
                                 f"CLS + {rows} rows x ({cols} patches + SPL)")
                    n_left -= n
            else:
                text = tokenizer.decode(input_ids[start:i]).replace("\n", "\\n")
                lines.append(f"[{start:>5}, {i:>5})  text  {text[:70]!r}{'...' if len(text) > 70 else ''}")
            start = i
    return lines


def main() -> None:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    folder, gguf = smollm2_gguf()
    model, tokenizer = upcycle(folder, gguf_file=gguf)
    model.eval()
    t_load = time.perf_counter() - t0
    console.print(f"upcycled SmolLM2-135M-Instruct into an EVEv2 model in {t_load:.1f} s "
                  f"(decoupled: {', '.join(model.config.decoupled)}; image token id {model.config.image_token_id})")
    console.print(parameter_table(model, "parameters (vision copies = exact copies of the LLM layers)"))

    processor = EveProcessor(EveImageProcessor(max_size=800), tokenizer, template="native")
    photo = sample_photo("astronaut")
    question = "What is in this picture?"
    messages = [{"role": "user", "content": [image_part(), text_part(question)]}]
    t0 = time.perf_counter()
    inputs = processor(messages=messages, images=[photo])
    t_proc = time.perf_counter() - t0
    ids = inputs["input_ids"][0]
    sizes = [tuple(p.shape[1:]) for p in inputs["pixel_values"]]
    console.print(f"\nphoto: scikit-image astronaut {photo.width}x{photo.height}px -> resized to "
                  f"{sizes[0][0]}x{sizes[0][1]}px (area budget 800², sides multiples of 32) in {t_proc * 1000:.0f} ms")
    console.print(f"sequence: {len(ids)} tokens, {int((ids == model.config.image_token_id).sum())} visual")
    for line in token_layout(ids, model.config.image_token_id, sizes, tokenizer):
        console.print("  " + line, markup=False, highlight=False)

    with torch.no_grad():
        t0 = time.perf_counter()
        model(**inputs)
        t_prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
        t_gen = time.perf_counter() - t0
    new = out[0, len(ids):]
    console.print(f"\nprefill of {len(ids)} tokens: {t_prefill:.2f} s; generate {len(new)} tokens "
                  f"(prefill + KV-cache decode): {t_gen:.2f} s")
    console.print(f"question: {question}")
    console.print(f"answer (untrained PEL, so not grounded yet): {tokenizer.decode(new, skip_special_tokens=True)!r}",
                  markup=False, highlight=False)


if __name__ == "__main__":
    main()
