"""Data pipeline throughput: collated training batches per second, real processor included.

Each case reads a LLaVA JSONL through LlavaDataset + SkipBad (records parsed, images decoded, the
real EveProcessor with the Qwen2.5 tokenizer: chat template, labels, resize, normalisation),
samples with RandomSampler and collates (right padding, or packing into rows of --pack-length) in
a torch DataLoader with 0 or 2 workers. Data: easy-VQA train (64x64 PNGs, ~10 questions per record)
at two image sizes, and synthetic text-in-image records (64-384 px). Also: raw record streaming
rate (parse + validate only). Medians of --repeats runs; one machine, one run.

    python benchmarks/bench_data.py            # appends to benchmarks/RESULTS.md
    python benchmarks/bench_data.py --quick --no-write
"""

import argparse
import datetime
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from machine import machine
from eve_vlm.data.bad import SkipBad
from eve_vlm.data.collate import Collator
from eve_vlm.data.easyvqa import export_easyvqa
from eve_vlm.data.llava import LlavaDataset, LlavaEncoder, parse_record, scan
from eve_vlm.data.packing import PackingCollator
from eve_vlm.data.sampler import RandomSampler
from eve_vlm.data.textimage import generate
from eve_vlm.processing import EveImageProcessor, EveProcessor, qwen_tokenizer

HERE = Path(__file__).resolve().parent




def time_loader(dataset, collate, batch_size, workers, batches, warmup=2) -> dict:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=RandomSampler(len(dataset), seed=0),
                                         collate_fn=collate, num_workers=workers)
    it = iter(loader)
    for _ in range(warmup):  # worker start-up and first-touch costs are not throughput
        next(it)
    tokens = real = 0
    t = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
        tokens += batch["input_ids"].numel()
        mask = batch["attention_mask"]
        real += int(mask.sum()) if mask is not None else sum(map(sum, batch["meta"]["seq_lens"]))
    seconds = time.perf_counter() - t
    del it
    return {"batches_s": batches / seconds, "samples_s": batches * batch_size / seconds,
            "tokens_s": tokens / seconds, "padding": 1 - real / tokens}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer batches and repeats")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--pack-length", type=int, default=4096)
    p.add_argument("--repeats", type=int)
    p.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()
    repeats, batches = (a.repeats or 2, 8) if a.quick else (a.repeats or 3, 25)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        run(a, Path(tmp), repeats, batches)


def run(a, tmp: Path, repeats: int, batches: int):
    export_easyvqa(str(tmp / "easyvqa"), splits=("train",))
    generate(str(tmp / "textimage"), num=600, seed=0)
    tok = qwen_tokenizer()
    vqa = (str(tmp / "easyvqa" / "train_qa.jsonl"), str(tmp / "easyvqa" / "train" / "images"))
    txt = (str(tmp / "textimage" / "qa.jsonl"), str(tmp / "textimage" / "images"))
    cases = [  # name, data, image max_size, resize mode
        ("easy-VQA 64 px (train resize: 7 visual tokens)", vqa, 64, "train"),
        ("easy-VQA upscaled to 256 px (73 visual tokens)", vqa, 256, "inference"),
        ("text-in-image, 448 px area (~200 visual tokens)", txt, 448, "inference"),
    ]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rows = []
    for name, (path, root), size, mode in cases:
        proc = EveProcessor(EveImageProcessor(max_size=size, resize_mode=mode), tok)
        dataset = SkipBad(LlavaDataset(path, root, LlavaEncoder(proc, template="eve", max_length=a.pack_length)))
        for collate_name, collate in (("padded", Collator(pad)), ("packed", PackingCollator(a.pack_length, pad))):
            for workers in (0, 2):
                runs = [time_loader(dataset, collate, a.batch_size, workers, batches) for _ in range(repeats)]
                med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                rows.append((name, collate_name, workers, med))
                print(f"{name:<50} {collate_name:<7} workers={workers}  {med['batches_s']:6.2f} batches/s  "
                      f"{med['samples_s']:7.1f} samples/s  {med['tokens_s']:9,.0f} tokens/s  "
                      f"padding {med['padding']:.0%}")
    # raw streaming: parse + validate only, no images, no tokenizer
    n = 200_000
    stream = tmp / "stream.jsonl"
    with open(stream, "w") as f:
        for i in range(n):
            f.write(f'{{"id": "s{i}", "image": "{i}.png", "conversations": [{{"from": "human", "value": '
                    f'"<image>\\nWhat is {i} + 1?"}}, {{"from": "gpt", "value": "{i + 1}"}}]}}\n')
    t = time.perf_counter()
    assert sum(1 for offset, raw in scan(str(stream)) if parse_record(raw, None, str(offset))) == n
    stream_rate = n / (time.perf_counter() - t)
    print(f"raw streaming (parse + validate, 1 process): {stream_rate:,.0f} records/s")
    if a.no_write:
        return
    lines = [f"\n## bench_data.py — {datetime.date.today().isoformat()}\n",
             f"Machine: {machine()}; torch threads 1; batch {a.batch_size}; medians of {repeats} runs of "
             f"{batches} batches; real EveProcessor + Qwen2.5 tokenizer, `eve` template; packing into rows of "
             f"{a.pack_length}.\n",
             "| data | collate | workers | batches/s | samples/s | tokens/s (incl. padding) | padding |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {n_} | {c} | {w} | {m['batches_s']:.2f} | {m['samples_s']:.1f} | {m['tokens_s']:,.0f} | "
              f"{m['padding']:.0%} |" for n_, c, w, m in rows]
    lines.append(f"\nRaw record streaming (parse + validate, no images, one process): {stream_rate:,.0f} records/s.\n")
    with open(a.results, "a") as f:
        f.write("\n".join(lines))
    print(f"appended to {a.results}")


if __name__ == "__main__":
    main()
