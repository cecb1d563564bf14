"""Caption engine on this machine: images/s per expert and per fuser, and caption quality.

1. Experts alone (one thread, batches of 16): layout, Tesseract OCR, on easy-VQA test images,
   synthetic text images (`eve_vlm.data.textimage`) and the real photos / scans bundled with
   scikit-image (300-1000 px, 4 rounds).
2. Fusers alone, on the experts' facts of the same images (image decoding and experts done
   before the clock starts): rule; an in-process eve model (SmolLM2-135M-Instruct upcycled, the
   vision side untrained: this is what an untrained captioner does); the same folder behind
   `eve serve` as an OpenAI endpoint (8 requests in flight, server batches up to 8); the demo's
   trained stage-3 model when `demo-out/` holds one (it was trained on easy-VQA questions, not
   captions).
3. The whole engine (`eve_vlm.caption.run`, layout + ocr + rule) with 1 and 2 expert workers.
4. Quality of every fuser's captions (`eve_vlm.caption.quality`): fact recall and hallucination.

    python benchmarks/bench_caption.py              # appends a section to benchmarks/RESULTS.md
    python benchmarks/bench_caption.py --quick      # fewer images, prints only
"""

import argparse
import concurrent.futures
import datetime
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from machine import machine
from eve_vlm.caption import load_expert, load_fuser, run
from eve_vlm.caption.engine import analyze, iter_inputs
from eve_vlm.caption.fusers import RuleFuser
from eve_vlm.caption.quality import score

HERE = Path(__file__).resolve().parent
DEMO_MODEL = HERE.parent / "demo-out" / "runs" / "stage3" / "model"
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "text", "page")
CLI = "import sys; from eve_vlm.cli import main; sys.exit(main(sys.argv[1:]))"


def datasets(root: Path, n: int) -> dict:
    """{name: (input folder, truth JSONL)} with n images each."""
    from eve_vlm.data.easyvqa import _by_image, caption_records
    from eve_vlm.data.textimage import generate

    by_image, paths = _by_image("test")
    first = dict(sorted(by_image.items())[:n])
    (root / "easyvqa").mkdir(parents=True)
    for i in first:
        Image.open(paths[i]).save(root / "easyvqa" / f"{i}.png")
    with open(root / "easyvqa-truth.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in caption_records("test", first))
    generate(str(root / "text"), num=n, seed=1)
    return {"easy-VQA": (root / "easyvqa", root / "easyvqa-truth.jsonl"),
            "text-in-image": (root / "text" / "images", root / "text" / "captions.jsonl")}


def photos(root: Path, rounds: int = 4) -> Path:
    """scikit-image's real photos and page scans (no ground truth: expert speed only)."""
    from eve_vlm.assets import sample_photo

    (root / "photos").mkdir()
    for r in range(rounds):
        for name in PHOTOS:
            sample_photo(name).save(root / "photos" / f"{name}-{r}.png")
    return root / "photos"


def time_experts(experts: list, items: list) -> dict:
    """Seconds per expert over `items` (decoded beforehand), batches of 16."""
    from eve_vlm.processing import load_image

    images = [load_image(i.image) for i in items]
    seconds = {}
    for expert in experts:
        start = time.perf_counter()
        for b in range(0, len(images), 16):
            expert(images[b:b + 16])
        seconds[expert.name] = time.perf_counter() - start
    return seconds


def time_fuser(fuser, analyses: list, out_dir: str, concurrency: int) -> tuple[float, list[dict]]:
    """(seconds, records) of fusing pre-analysed images as the engine does: chunks of the
    fuser's batch size, `concurrency` in flight."""
    from eve_vlm.caption.engine import fuse

    rule = RuleFuser()
    chunks = [analyses[b:b + fuser.batch_size] for b in range(0, len(analyses), fuser.batch_size)]
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(min(concurrency, fuser.max_concurrency or concurrency)) as pool:
        records = [r for rs in pool.map(lambda c: fuse(c, fuser, out_dir, rule), chunks) for r in rs]
    return time.perf_counter() - start, records


def upcycled_smollm2(path: Path, max_size: int) -> str:
    from eve_vlm.assets import smollm2_gguf
    from eve_vlm.convert.upcycle import upcycle
    from eve_vlm.processing import EveImageProcessor, EveProcessor

    folder, gguf = smollm2_gguf()
    torch.manual_seed(0)  # the patch embedding and the <image> embedding are drawn at random
    model, tokenizer = upcycle(folder, gguf_file=gguf, dtype=torch.float32)
    model.save_pretrained(path)
    EveProcessor(EveImageProcessor(max_size=max_size), tokenizer, template="native").save_pretrained(path)
    return str(path)


class Server:
    """`eve serve` in a subprocess on a free loopback port."""

    def __init__(self, model_dir: str):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen([sys.executable, "-c", CLI, "serve", "--model", model_dir, "--port",
                                      str(self.port), "--max-batch-size", "8", "--log-level", "warning"], env=env)
        deadline = time.monotonic() + 300
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("eve serve did not start")
                time.sleep(0.5)
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="20 + 20 images, 4 + 4 for the model fusers; prints only")
    p.add_argument("--images", type=int, default=100, help="per data set, experts and rule fuser")
    p.add_argument("--model-images", type=int, default=24, help="per data set, model fusers")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--max-size", type=int, default=256, help="image budget of the upcycled captioner")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if args.quick:
        args.images, args.model_images = 20, 4
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_THREAD_LIMIT", "1")
    work = Path(tempfile.mkdtemp(prefix="bench-caption-"))
    data = datasets(work, args.images)
    experts = [load_expert("layout"), load_expert("ocr")]

    expert_rows, analyses = [], {}
    for name, (folder, _) in data.items():
        items = list(iter_inputs([str(folder)]))
        for expert, seconds in time_experts(experts, items).items():
            expert_rows.append((expert, name, len(items), len(items) / seconds))
        analyses[name] = analyze(items, experts)
    items = list(iter_inputs([str(photos(work))]))
    for expert, seconds in time_experts(experts, items).items():
        expert_rows.append((expert, "photos / scans", len(items), len(items) / seconds))

    fusers = [("rule", RuleFuser(), args.images, 1)]
    smol = upcycled_smollm2(work / "smollm2-eve", args.max_size)
    fusers.append(("model: SmolLM2-135M upcycled, untrained vision", load_fuser(
        smol, max_new_tokens=args.max_new_tokens, batch_size=8), args.model_images, 1))
    server = Server(smol)
    fusers.append(("endpoint: eve serve, same model, 8 in flight", load_fuser(
        server.url, max_new_tokens=args.max_new_tokens), args.model_images, 8))
    if (DEMO_MODEL / "config.json").exists():
        fusers.append(("model: demo stage-3 (trained on easy-VQA QA)", load_fuser(
            str(DEMO_MODEL), max_new_tokens=args.max_new_tokens, batch_size=8), args.model_images, 1))

    fuser_rows, quality_rows = [], []
    try:
        for label, fuser, n, concurrency in fusers:
            total_s, total_n = 0.0, 0
            for name, (folder, truth) in data.items():
                seconds, records = time_fuser(fuser, analyses[name][:n], str(work), concurrency)
                total_s, total_n = total_s + seconds, total_n + len(records)
                out = work / f"{label.split(':')[0]}-{len(fuser_rows)}-{name}.jsonl"
                with open(out, "w") as f:
                    f.writelines(json.dumps(r) + "\n" for r in records)
                quality_rows.append((label, name, score(str(out), str(truth))))
                if name == "easy-VQA":
                    print(f"{label}: {records[0]['conversations'][1]['value'][:300]!r}", flush=True)
            fuser_rows.append((label, total_n, total_n / total_s))
            print(fuser_rows[-1], flush=True)
    finally:
        server.close()

    engine_rows = []
    inputs = [str(folder) for folder, _ in data.values()]
    for workers in (1, 2):
        counts = run(inputs, str(work / f"engine-{workers}.jsonl"), experts, workers=workers, progress=False)
        engine_rows.append((workers, counts["captioned"], counts["captioned"] / counts["seconds"]))

    load = os.getloadavg()[0]
    lines = [f"## Caption engine ({datetime.date.today()}, `benchmarks/bench_caption.py`)", "",
             f"Machine: {machine()}, Tesseract {experts[1].version}; load average at the end {load:.2f}. "
             f"{args.images} easy-VQA test images (64x64) + {args.images} synthetic text images (64-384 px) "
             f"(+ {len(PHOTOS)} scikit-image photos / scans x 4 for the experts); "
             f"model fusers on the first {args.model_images} of each, greedy, max {args.max_new_tokens} new tokens, "
             f"upcycled captioner at a {args.max_size}² image budget. Fuser rates exclude the experts.", "",
             "| expert | images | images/s (1 thread) |", "| --- | --- | ---: |"]
    lines += [f"| {e} | {n} {d} | {r:.1f} |" for e, d, n, r in expert_rows]
    lines += ["", "| fuser | images | images/s |", "| --- | ---: | ---: |"]
    lines += [f"| {label} | {n} | {r:.2f} |" for label, n, r in fuser_rows]
    lines += ["", "| whole engine (layout + ocr + rule) | images | images/s |", "| --- | ---: | ---: |"]
    lines += [f"| {w} expert worker{'s' if w > 1 else ''} | {n} | {r:.1f} |" for w, n, r in engine_rows]
    lines += ["", "Caption quality (`eve caption-quality`; recall: ground-truth facts the caption states; "
              "hallucination: stated colours / shapes / quoted words not in the ground truth):", "",
              "| fuser | data | captions | fact recall | hallucination rate | captions with a hallucination "
              "| fallbacks |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for label, name, s in quality_rows:
        lines.append(f"| {label} | {name} | {s['captions']} | {s['recall']:.3f} | {s['hallucination_rate']:.3f} | "
                     f"{s['hallucinated_captions']} | {s['fallback']} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        with open(HERE / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
