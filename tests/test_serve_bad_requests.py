"""Every kind of bad request gets the right 4xx with an OpenAI-style error body, and none of them
hurts the server."""

import base64
import json
import os
import socket
import struct
import zlib

import httpx
import pytest

from eve_vlm.serve import Limits, create_app
from tiny import data_uri, image_message, png, serve_in_thread

MODEL = "tiny"


@pytest.fixture(scope="module")
def url(tiny):
    limits = Limits(max_image_bytes=1 << 20, max_images=4)
    with serve_in_thread(create_app(*tiny, model_name=MODEL, limits=limits)) as base:
        yield base


def bomb_png(width=100_000, height=100_000) -> bytes:
    """A valid PNG header that claims width x height pixels, with almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def chat(*messages, **fields) -> dict:
    return {"model": MODEL, "messages": list(messages), "max_tokens": 2, **fields}


def with_image(url: str) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "?"}]
    return {"role": "user", "content": parts}


HI = {"role": "user", "content": "Hi"}
NOISE = base64.b64encode(os.urandom(1_200_000)).decode()

CASES = {  # name: (body: dict or raw bytes, status, code)
    "invalid JSON": (b'{"model": "tiny", "messages": [', 400, "invalid_json"),
    "JSON but not an object": (b'["model"]', 400, "invalid_value"),
    "bad base64": (chat(with_image("data:image/png;base64,!!!not-base64!!!")), 400, "invalid_image"),
    "not an image file": (chat(with_image(data_uri(b"%PDF-1.4 hello", "application/pdf"))), 400, "invalid_image"),
    "truncated PNG": (chat(with_image(data_uri(png("red", (300, 200))[:120]))), 400, "invalid_image"),
    "decompression bomb": (chat(with_image(data_uri(bomb_png()))), 400, "image_too_large"),
    "image over the byte cap": (chat(with_image("data:image/png;base64," + NOISE)), 400, "image_too_large"),
    "too many images": (chat(image_message("?", *[png()] * 5)), 400, "too_many_images"),
    "unknown role": (chat({"role": "robot", "content": "beep"}), 400, "invalid_value"),
    "empty messages": (chat(), 400, "invalid_value"),
    "negative max_tokens": (chat(HI, max_tokens=-5), 400, "invalid_value"),
    "remote URL without allow-list": (chat(with_image("https://example.com/cat.png")), 400, "image_url_not_allowed"),
    "local file path as image": (chat(with_image("/etc/passwd")), 400, "invalid_image_url"),
    "file: URL as image": (chat(with_image("file:///etc/passwd")), 400, "invalid_image_url"),
    "wrong content part type": (chat({"role": "user", "content": [{"type": "audio", "audio": "x"}]}), 400,
                                "invalid_value"),
    "content of a wrong type": (chat({"role": "user", "content": 42}), 400, "invalid_value"),
    "missing model": ({"messages": [HI]}, 400, "invalid_value"),
    "unknown model": (chat(HI, model="gpt-9"), 404, "model_not_found"),
    "temperature out of range": (chat(HI, temperature=7), 400, "invalid_value"),
    "top_p zero": (chat(HI, top_p=0), 400, "invalid_value"),
    "n > 1": (chat(HI, n=2), 400, "invalid_value"),
    "five stop strings": (chat(HI, stop=["a", "b", "c", "d", "e"]), 400, "invalid_value"),
    "assistant speaks first": (chat({"role": "assistant", "content": "Hello"}), 400, None),
    "prompt too long": (chat({"role": "user", "content": "word " * 3000}), 400, "context_length_exceeded"),
    "prompt + max_tokens too long": (chat({"role": "user", "content": "word " * 1000}, max_tokens=1500), 400,
                                     "context_length_exceeded"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_request(url, name):
    body, status, code = CASES[name]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(url + "/v1/chat/completions", content=content, headers={"Content-Type": "application/json"},
                   timeout=60)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"] and error["code"] == code
    assert error["type"] == "invalid_request_error"


def test_100_mb_body_is_rejected_before_it_is_read(url):
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 104857600\r\n\r\n" + b"x" * 65536)  # 64 KiB of the announced 100 MiB
        head, _, body = _read_response(s).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(body)["error"]["code"] == "request_too_large"


def test_oversized_chunked_body_is_cut_off(url):
    def chunks():  # no Content-Length: the server counts what arrives
        for _ in range(25):
            yield b"x" * (1 << 20)

    r = httpx.post(url + "/v1/chat/completions", content=chunks(), timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("method, path, status", [("GET", "/v1/chat/completions", 405), ("GET", "/v2/nothing", 404)])
def test_unknown_routes(url, method, path, status):
    r = httpx.request(method, url + path, timeout=30)
    assert r.status_code == status and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_the_server_is_fine_afterwards(url):
    assert httpx.get(url + "/health", timeout=30).json()["status"] == "ok"
    r = httpx.post(url + "/v1/chat/completions", json=chat(image_message("What?", png("red"))), timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


def _read_response(s: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        piece = s.recv(65536)
        if not piece:
            break
        data += piece
    return data
