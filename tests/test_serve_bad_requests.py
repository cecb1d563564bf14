"""Every kind of bad request gets the right 4xx with an OpenAI-style error body, and none of them
hurts the server: on the tiny model (native template) and on `plain` (stages 1-2.1) and `eve`
(stage 2.2 on) folders, whose prompts are built differently."""

import base64
import json
import os
import socket
import struct
import zlib

import httpx
import pytest

from eve_vlm.infer import load
from eve_vlm.serve import Limits, create_app
from tiny import data_uri, image_message, png, save_tiny_model, serve_in_thread

MODEL = "tiny"
LIMITS = Limits(max_image_bytes=1 << 20, max_images=4)


@pytest.fixture(scope="module")
def url(tiny):
    with serve_in_thread(create_app(*tiny, model_name=MODEL, limits=LIMITS)) as base:
        yield base


@pytest.fixture(scope="module", params=["plain", "eve"])
def served(request, tmp_path_factory):
    """(template, base URL) of the tiny model saved with that chat template."""
    folder = save_tiny_model(tmp_path_factory.mktemp(request.param), template=request.param)
    with serve_in_thread(create_app(*load(folder), model_name=MODEL, limits=LIMITS)) as base:
        yield request.param, base


def bomb_png(width=100_000, height=100_000) -> bytes:
    """A valid PNG header that claims width x height pixels, with almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def chat(*messages, **fields) -> dict:
    return {"model": MODEL, "messages": list(messages), "max_tokens": 2, **fields}


def with_image(url: str | dict) -> dict:
    parts = [{"type": "image_url", "image_url": url if isinstance(url, dict) else {"url": url}},
             {"type": "text", "text": "?"}]
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


def post(base: str, body) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(base + "/v1/chat/completions", content=content, headers={"Content-Type": "application/json"},
                      timeout=60)


def error_of(r: httpx.Response, status: int) -> dict:
    """The OpenAI-shaped error of a response that must have `status`."""
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


@pytest.mark.parametrize("name", list(CASES))
def test_bad_request(url, name):
    body, status, code = CASES[name]
    error = error_of(post(url, body), status)
    assert error["code"] == code and error["type"] == "invalid_request_error"


def user(content) -> dict:
    return {"role": "user", "content": content}


PICTURE = with_image(data_uri(png("blue")))
NO_IMAGE = (None, "messages", "template (plain) ignores user text and writes a caption of the images: send an image")
EMPTY = (None, "messages", "turn 0: the user's message is empty (no image, and no text that gives a token)")
NO_CONTENT = (None, "messages", "turn 0: the content is a NoneType, not a string or a list of parts")
SERVED = None  # a 200: the template has a prompt to answer

# name: (body, {template: (code, param, what the message says) or SERVED})
BY_TEMPLATE = {
    "text only": (chat(HI), {"plain": NO_IMAGE, "eve": SERVED}),
    "null content": (chat(user(None)), {"plain": NO_CONTENT, "eve": NO_CONTENT}),
    "empty content list": (chat(user([])), {"plain": NO_IMAGE, "eve": EMPTY}),
    "empty text": (chat(user("")), {"plain": NO_IMAGE, "eve": EMPTY}),
    "empty text part": (chat(user([{"type": "text", "text": ""}])), {"plain": NO_IMAGE, "eve": EMPTY}),
    "an empty turn before an image": (chat(user(""), {"role": "assistant", "content": "?"}, PICTURE), {
        "plain": (None, "messages", "the plain template takes one user turn and one caption"), "eve": EMPTY}),
    "prompt too long": (chat(user("word " * 3000)), {
        "plain": NO_IMAGE, "eve": ("context_length_exceeded", "messages", "the limits are 2048 prompt tokens")}),
}
EVERYWHERE = {  # the same answer on every template: name: (body, code, param, what the message says)
    "NUL in the text": (chat(user("Hi\0there")), "invalid_value", "messages.0.content", "NUL characters"),
    "NUL in a text part": (chat(user([{"type": "text", "text": "\0"}])), "invalid_value",
                           "messages.0.content.0.text", "NUL characters"),
    "unknown part type": (chat(user([{"type": "input_audio", "input_audio": {}}])), "invalid_value",
                          "messages.0.content.0", "'input_audio'"),
    "tool role": (chat(HI, {"role": "tool", "content": "42"}), "invalid_value", "messages.1.role",
                  "'system', 'user' or 'assistant'"),
    "undecodable image": (chat(with_image(data_uri(b"GIF89a garbage", "image/gif"))), "invalid_image",
                          "messages.0.content.0.image_url.url", "cannot read image"),
    "malformed image URL": (chat(with_image("http://[::1/cat.png")), "invalid_image_url",
                            "messages.0.content.0.image_url.url", "malformed image URL"),
    "too many images": (chat(image_message("?", *[png()] * 5)), "too_many_images", "messages", "the limit is 4"),
    "prompt + max_tokens over the context": (chat(PICTURE, max_tokens=2048), "context_length_exceeded", "messages",
                                             "2048 in all"),
    "unknown parameter": (chat(PICTURE, best_of=3), "unknown_parameter", "best_of", "unknown parameter"),
    "unknown message field": (chat({**PICTURE, "cache_control": {}}), "unknown_parameter",
                              "messages.0.cache_control", "unknown parameter"),
    "seed beyond 64 bits": (chat(PICTURE, seed=1 << 70), "invalid_value", "seed", "less than"),
    "infinite repetition_penalty": (json.dumps(chat(PICTURE))[:-1].encode() + b', "repetition_penalty": Infinity}',
                                    "invalid_value", "repetition_penalty", "finite"),
    "participant name": (chat({**PICTURE, "name": "bob"}), "unsupported_parameter", "messages.0.name", "remove it"),
    "tool calls in history": (chat(PICTURE, {"role": "assistant", "tool_calls": [{"id": "1"}]}, HI),
                              "unsupported_parameter", "messages.1.tool_calls", "remove it"),
    "image detail": (chat(with_image({"url": data_uri(png()), "detail": "high"})), "unsupported_parameter",
                     "messages.0.content.0.image_url.detail", 'set it to "auto"'),
}
UNSUPPORTED = {  # OpenAI options not implemented here: (a value that asks for something, the neutral one)
    "logprobs": (True, "false"), "top_logprobs": (1000, "0"), "tools": ([{"type": "function", "function": {
        "name": "f"}}], "[]"), "tool_choice": ("auto", '"none"'), "parallel_tool_calls": (True, None),
    "functions": ([{"name": "f"}], "[]"), "function_call": ("auto", '"none"'), "logit_bias": ({"42": 5}, "{}"),
    "response_format": ({"type": "json_object"}, '{"type": "text"}'), "frequency_penalty": (0.5, "0"),
    "presence_penalty": (0.5, "0"), "modalities": (["text", "audio"], '["text"]'), "store": (True, "false"),
    "reasoning_effort": ("high", None),
}
EVERYWHERE |= {name: (chat(PICTURE, **{name: value}), "unsupported_parameter", name,
                      f"does not support it: remove it or set it to {neutral}" if neutral else "remove it")
               for name, (value, neutral) in UNSUPPORTED.items()}


@pytest.mark.parametrize("name", list(BY_TEMPLATE))
def test_bad_request_by_template(served, name):
    template, base = served
    body, expected = BY_TEMPLATE[name]
    r = post(base, body)
    if expected[template] is SERVED:
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"], r.text
        return
    code, param, words = expected[template]
    error = error_of(r, 400)
    assert (error["code"], error["param"], error["type"]) == (code, param, "invalid_request_error")
    assert words in error["message"]


@pytest.mark.parametrize("name", list(EVERYWHERE))
def test_bad_request_on_every_template(served, name):
    body, code, param, words = EVERYWHERE[name]
    error = error_of(post(served[1], body), 400)
    assert (error["code"], error["param"], error["type"]) == (code, param, "invalid_request_error")
    assert words in error["message"], error["message"]


def test_options_that_ask_for_nothing_are_accepted(served):
    neutral = {name: json.loads(value) for name, (_, value) in UNSUPPORTED.items() if value is not None}
    picture = with_image({"url": data_uri(png("green")), "detail": "auto"})
    r = post(served[1], chat(picture, n=1, user="alice", **neutral))
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2, r.text


def test_every_bad_request_is_a_4xx_and_the_server_keeps_serving(served):
    """Catch-all: every request of every table, on every template, is an OpenAI-shaped 4xx, and the
    server answers a good request afterwards."""
    template, base = served
    bodies = [b for b, *_ in CASES.values()] + [b for b, *_ in EVERYWHERE.values()]
    bodies += [b for b, expected in BY_TEMPLATE.values() if expected[template] is not SERVED]
    for body in bodies:
        r = post(base, body)
        assert 400 <= r.status_code < 500, (body if isinstance(body, bytes) else json.dumps(body)[:300], r.text)
        error_of(r, r.status_code)
    assert httpx.get(base + "/health", timeout=30).json()["status"] == "ok"
    r = post(base, chat(image_message("What?", png("red"))))
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


def test_a_malformed_url_on_an_allowed_host_is_a_400(tiny):  # noqa: F811
    app = create_app(*tiny, model_name=MODEL, allow_remote_images=["images.example"])
    with serve_in_thread(app) as base:  # the URL is refused before any connection is tried
        error = error_of(post(base, chat(with_image("http://images.example:port/cat.png"))), 400)
    assert (error["code"], error["param"]) == ("invalid_image_url", "messages.0.content.0.image_url.url")


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


@pytest.mark.parametrize("method, path, status", [("GET", "/v1/chat/completions", 405), ("GET", "/v2/nothing", 404),
                                                 ("POST", "/v1/completions", 404)])  # no legacy completions
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
