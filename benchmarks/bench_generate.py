"""Generation speed of eve-vlm on this machine, one run, side by side.

1. Time to first token (TTFT) and decode tokens/s of `EveForConditionalGeneration.generate` vs
   transformers' `generate` on the base LLM it was upcycled from (same shape, same text weights),
   on a text prompt of the same length, plus eve on a prompt with an image (goal: eve/HF >= 1.0).
   Also `eve_vlm.infer.generate` (the engine behind chat/infer/serve: per-row stops, streaming).
2. Batched decode throughput of eve at batch 1 / 4 / 8 (left-padded image+text prompts; goal:
   tokens/s at 8 >= 3x batch 1).
3. `eve serve` throughput: 16 requests from 8 concurrent clients vs the same sent one at a time
   (in-process uvicorn on 127.0.0.1, dynamic batching up to 8).

TTFT = median wall time of `generate(max_new_tokens=1)`; decode tokens/s = (N - 1) / (median
time of `generate(N tokens)` - TTFT). Variants are interleaved in every repeat so slow phases of
a busy machine hit all of them. Weights are random (speed does not depend on them);
`min_new_tokens` forces exactly N tokens where the API allows it.

    python benchmarks/bench_generate.py            # SmolLM2-135M shape, appends to benchmarks/RESULTS.md
    python benchmarks/bench_generate.py --quick    # small shape, fewer repeats, prints only
"""

import argparse
import base64
import datetime
import io
import os
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image
from transformers import LlamaConfig, LlamaForCausalLM

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from machine import machine
from eve_vlm.convert.upcycle import upcycle  # noqa: E402
from eve_vlm.infer import GenerationOptions, Prompt, encode, generate  # noqa: E402
from eve_vlm.processing import EveImageProcessor, EveProcessor, smollm2_tokenizer  # noqa: E402

SHAPES = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3),
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2),
}


def build(shape: str):
    tokenizer = smollm2_tokenizer()
    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=49152, max_position_embeddings=8192, tie_word_embeddings=True,
                                       rope_theta=1e5, **SHAPES[shape])).eval()
    eve = upcycle(llm, tokenizer=tokenizer, pel_hidden_size=1024)[0].eval()
    processor = EveProcessor(EveImageProcessor(max_size=448), tokenizer, template="native")
    return llm, eve, processor


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median(xs) -> float:
    return statistics.median(xs)


def single_stream(llm, eve, processor, prompt_len: int, new: int, repeats: int) -> list[tuple]:
    """TTFT and decode tokens/s, eve vs HF, batch 1."""
    text = torch.randint(100, 49000, (1, prompt_len))
    photo = Image.effect_mandelbrot((448, 448), (-2, -1.5, 1, 1.5), 60).convert("RGB")
    msg = [{"role": "user", "content": [{"type": "image", "image": photo}, {"type": "text", "text": "Describe"}]}]
    with_image = encode(processor, msg)
    # Pad the image prompt with text to the same length, so every variant prefills prompt_len tokens.
    fill = prompt_len - len(with_image.input_ids)
    image_ids = torch.tensor([text[0, :fill].tolist() + with_image.input_ids])
    fixed = dict(do_sample=False, pad_token_id=0)
    n_visual = with_image.input_ids.count(eve.config.image_token_id)

    def new_tokens(out) -> int:
        return out.shape[1] - prompt_len

    variants = {  # each returns how many tokens it generated
        "HF LlamaForCausalLM, text": lambda n: new_tokens(
            llm.generate(text, max_new_tokens=n, min_new_tokens=n, **fixed)),
        "eve, text": lambda n: new_tokens(eve.generate(text, max_new_tokens=n, min_new_tokens=n, **fixed)),
        f"eve, 1 image ({n_visual} visual tokens) + text": lambda n: new_tokens(eve.generate(
            image_ids, pixel_values=with_image.pixel_values, max_new_tokens=n, min_new_tokens=n, **fixed)),
        "eve engine (infer.generate), text": lambda n: generate(
            eve, processor, [Prompt(text[0].tolist(), [])], GenerationOptions(max_new_tokens=n))[0].completion_tokens,
    }
    first, full, made = {k: [] for k in variants}, {k: [] for k in variants}, {k: [] for k in variants}
    for fn in variants.values():  # warm-up
        fn(2)
    for r in range(repeats):
        names = list(variants)
        for k in names[r % len(names):] + names[:r % len(names)]:
            first[k].append(timed(lambda: variants[k](1)))
            start = time.perf_counter()
            made[k].append(variants[k](new))  # the engine has no min_new_tokens: it may stop at an end token
            full[k].append(time.perf_counter() - start)
    rows = []
    for k in variants:
        ttft = median(first[k])
        rows.append((k, ttft, (median(made[k]) - 1) / (median(full[k]) - ttft)))
    return rows


def batched(eve, processor, new: int, repeats: int, sizes=(1, 4, 8)) -> list[tuple]:
    """Decode tokens/s of eve.generate at several batch sizes (image + text prompts, left-padded)."""
    colors = ["red", "green", "blue", "white", "black", "yellow", "purple", "orange"]
    convs = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"What is shown? ({i})"}]}]
             for i in range(max(sizes))]
    images = [[Image.new("RGB", (320, 240), c)] for c in colors[:max(sizes)]]
    inputs = {b: processor(messages=convs[:b], images=images[:b]) for b in sizes}
    fixed = dict(do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
    first, full = {b: [] for b in sizes}, {b: [] for b in sizes}
    for b in sizes:
        timed(lambda: eve.generate(**inputs[b], max_new_tokens=2, **fixed))
    for r in range(repeats):
        for b in sizes[r % len(sizes):] + sizes[:r % len(sizes)]:
            first[b].append(timed(lambda: eve.generate(**inputs[b], max_new_tokens=1, **fixed)))
            full[b].append(timed(lambda: eve.generate(**inputs[b], max_new_tokens=new, min_new_tokens=new, **fixed)))
    rows = []
    for b in sizes:
        rate = b * (new - 1) / (median(full[b]) - median(first[b]))
        rows.append((b, inputs[b]["input_ids"].shape[1], median(first[b]), rate))
    return rows


def server(eve, processor, n_requests: int, new: int, clients: int = 8) -> list[tuple]:
    """Completion tokens/s of the HTTP server: sequential vs `clients` concurrent clients."""
    import httpx
    import uvicorn

    from eve_vlm.serve import create_app

    def body(i):
        buf = io.BytesIO()
        Image.new("RGB", (320, 240), (i * 30 % 256, 80, 160)).save(buf, "PNG")
        uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        return {"model": "bench", "max_tokens": new, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": f"Describe image {i}."}]}]}

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = create_app(eve, processor, model_name="bench", max_batch_size=clients)
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1/chat/completions"
    try:
        def ask(i):
            r = httpx.post(url, json=body(i), timeout=600)
            r.raise_for_status()
            return r.json()["usage"]["completion_tokens"]

        ask(0)  # warm-up
        rows = []
        for name, workers in (("sequential (1 client)", 1), (f"{clients} concurrent clients", clients)):
            batches, start = app.state.batcher.batches, time.perf_counter()
            with ThreadPoolExecutor(workers) as pool:
                tokens = sum(pool.map(ask, range(n_requests)))
            wall = time.perf_counter() - start
            rows.append((name, n_requests, app.state.batcher.batches - batches, tokens, wall, tokens / wall))
        return rows
    finally:
        srv.should_exit = True
        thread.join(timeout=60)




def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m")
    p.add_argument("--quick", action="store_true", help="small shape, 2 repeats, prints only")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads (a busy small machine stalls on more)")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    args = p.parse_args()
    if args.quick:
        args.shape, args.repeats, args.new_tokens, args.no_write = "small", 2, 16, True
    torch.set_num_threads(args.threads)
    llm, eve, processor = build(args.shape)
    load_start = os.getloadavg()[0]
    single = single_stream(llm, eve, processor, args.prompt_len, args.new_tokens, args.repeats)
    batch = batched(eve, processor, args.new_tokens, args.repeats)
    serving = server(eve, processor, 16, args.new_tokens)
    hf_ttft, hf_rate = single[0][1], single[0][2]
    shape = SHAPES[args.shape]
    lines = [
        f"## Generation speed ({datetime.date.today()}, `benchmarks/bench_generate.py`)", "",
        f"Machine: {machine()}; load average {load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end. "
        f"Model: `{args.shape}` shape (hidden {shape['hidden_size']}, {shape['num_hidden_layers']} layers, "
        f"{shape['num_attention_heads']}/{shape['num_key_value_heads']} heads, vocab 49152 + `<image>`, random "
        f"weights, fp32), EVEv2 (all three groups decoupled). Medians of {args.repeats} interleaved repeats.", "",
        f"Single stream, prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, greedy:", "",
        "| variant | TTFT s | decode tok/s | TTFT vs HF | decode vs HF (goal >= 1.0) |",
        "|---|---:|---:|---:|---:|",
        *[f"| {k} | {t:.3f} | {r:.1f} | {hf_ttft / t:.2f}x | **{r / hf_rate:.2f}x** |" for k, t, r in single], "",
        f"Batched decode (eve.generate, 1 image (resized to the 448² budget) + text per row, left-padded, "
        f"{args.new_tokens} new tokens):", "",
        "| batch | padded prompt | TTFT s | decode tok/s | vs batch 1 (goal at 8: >= 3x) |",
        "|---:|---:|---:|---:|---:|",
        *[f"| {b} | {n} | {t:.3f} | {r:.1f} | **{r / batch[0][3]:.2f}x** |" for b, n, t, r in batch], "",
        f"Server (`create_app` in uvicorn on 127.0.0.1, max batch 8, clients in the same process; 16 requests "
        f"of 1 image + text, max_tokens {args.new_tokens}):", "",
        "| clients | requests | batches decoded | completion tokens | wall s | tokens/s | vs sequential |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *[f"| {k} | {n} | {b} | {tok} | {w:.2f} | {r:.1f} | **{r / serving[0][5]:.2f}x** |"
          for k, n, b, tok, w, r in serving],
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if not args.no_write:
        with open(args.results, "a", encoding="utf-8") as f:
            f.write("\n" + report)
        print(f"appended to {args.results}")


if __name__ == "__main__":
    main()
