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
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def save_tiny_model(path, template: str = "native") -> str:
    """A random 2-layer, 64-wide EVE model on SmolLM2's tokenizer (49,152 ids + <image>), saved with
    its processor (images at a 64² budget: 7 tokens each; chat `template`). Weights are large
    enough (std 0.3) that different prompts get different greedy answers."""
    from eve_vlm import EveForConditionalGeneration
    from eve_vlm.processing import EveImageProcessor, EveProcessor, smollm2_tokenizer

    torch.manual_seed(0)
    tokenizer = smollm2_tokenizer()
    llm = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True, initializer_range=0.3))
    model = EveForConditionalGeneration.from_llm(llm, tokenizer=tokenizer, pel_hidden_size=32)
    model.save_pretrained(path)
    EveProcessor(EveImageProcessor(max_size=64), tokenizer, template=template).save_pretrained(path)
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
    """Parse `eve CMD ...` with the infer subcommands only (independent of eve_vlm.cli's wiring)."""
    from eve_vlm.infer.cli import add_infer_commands

    parser = argparse.ArgumentParser(prog="eve")
    add_infer_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


CLI = ("import sys, argparse; from eve_vlm.infer.cli import add_infer_commands; p = argparse.ArgumentParser('eve'); "
       "add_infer_commands(p.add_subparsers(required=True)); a = p.parse_args(sys.argv[1:]); a.handler(a)")


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
