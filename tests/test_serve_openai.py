"""The official `openai` client against the server: chat with an image (plain and streamed),
usage, /v1/models, API keys; and `eve serve` as a command."""

import time

import httpx
import openai
import pytest

from eve_vlm.infer import GenerationOptions, encode, generate
from eve_vlm.serve import create_app
from tiny import eve_process, free_port, image_message, png, serve_in_thread

KEY = "sk-test-123"


@pytest.fixture(scope="module")
def url(tiny):
    with serve_in_thread(create_app(*tiny, model_name="tiny-eve", api_key=KEY)) as base:
        yield base


def client(url, key=KEY, **kw):
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60, **kw)


def expected(tiny, messages, max_new_tokens):
    model, processor = tiny
    return generate(model, processor, [encode(processor, messages)], GenerationOptions(max_new_tokens))[0]


def test_models(url):
    models = client(url).models.list()
    assert [m.id for m in models.data] == ["tiny-eve"]


def test_chat_with_an_image(url, tiny):
    message = image_message("What is in this picture?", png("red"))
    reply = client(url).chat.completions.create(model="tiny-eve", messages=[message], max_tokens=7, temperature=0)
    want = expected(tiny, [message], 7)
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == want.text
    assert choice.finish_reason == "length" and reply.object == "chat.completion" and reply.model == "tiny-eve"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == \
        (want.prompt_tokens, 7, want.prompt_tokens + 7)


def test_streamed_chat_with_an_image_and_history(url, tiny):
    messages = [{"role": "system", "content": "Be brief."}, image_message("Describe", png("blue"), png("red")),
                {"role": "assistant", "content": "Two squares."}, {"role": "user", "content": "Which colors?"}]
    stream = client(url).chat.completions.create(model="tiny-eve", messages=messages, max_tokens=9, stream=True,
                                                 stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # really streamed
    want = expected(tiny, messages, 9)
    assert text == want.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 9 and chunks[-1].usage.prompt_tokens == want.prompt_tokens


def test_stop_and_seed(url):
    c = client(url)
    ask = dict(model="tiny-eve", messages=[{"role": "user", "content": "Count"}], max_tokens=12)
    full = c.chat.completions.create(**ask).choices[0].message.content
    stop = full[4:7]
    cut = c.chat.completions.create(**ask, stop=[stop]).choices[0]
    assert cut.message.content == full[:full.index(stop)] and cut.finish_reason == "stop"
    sampled = [c.chat.completions.create(**ask, temperature=1.0, top_p=0.9, seed=s).choices[0].message.content
               for s in (7, 7, 8)]
    assert sampled[0] == sampled[1] != sampled[2]


def test_api_key_is_required(url):
    with pytest.raises(openai.AuthenticationError) as err:
        client(url, key="wrong").models.list()
    assert err.value.status_code == 401 and err.value.body["code"] == "invalid_api_key"
    r = httpx.post(url + "/v1/chat/completions", json={"model": "tiny-eve", "messages": []}, timeout=30)
    assert r.status_code == 401 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.get(url + "/health", timeout=30).json()["status"] == "ok"  # health needs no key


def test_without_api_key_any_client_is_served(tiny):
    with serve_in_thread(create_app(*tiny, model_name="open")) as base:
        reply = client(base, key="anything").chat.completions.create(
            model="open", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
        assert reply.choices[0].message.content and reply.usage.completion_tokens == 2
        assert httpx.get(base + "/v1/models", timeout=30).status_code == 200


def test_remote_images_only_from_allowed_hosts(tiny, monkeypatch):
    from eve_vlm.serve import app as server

    fetched = []

    async def fake_fetch(url, param, limits):  # no network in tests
        fetched.append(url)
        return png("green")

    monkeypatch.setattr(server, "_fetch", fake_fetch)
    app = create_app(*tiny, model_name="tiny-eve", allow_remote_images=["images.example"])
    with serve_in_thread(app) as base:
        def ask(image_url):
            message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                                   {"type": "text", "text": "What?"}]}
            return client(base).chat.completions.create(model="tiny-eve", messages=[message], max_tokens=2)

        assert ask("https://images.example/cat.png").choices[0].message.content
        with pytest.raises(openai.BadRequestError) as err:
            ask("https://elsewhere.example/cat.png")
        assert err.value.body["code"] == "image_url_not_allowed"
    assert fetched == ["https://images.example/cat.png"]


def test_eve_serve_command(tiny_dir):
    port = free_port()
    with eve_process("serve", "--model", tiny_dir, "--port", str(port), "--max-batch-size", "4",
                     "--log-level", "warning", port=port, EVE_API_KEY=KEY):
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(base + "/v1/models", timeout=30).status_code == 401
        model_id = client(base).models.list().data[0].id
        assert model_id == tiny_dir.rstrip("/").split("/")[-1]
        reply = client(base).chat.completions.create(
            model=model_id, messages=[image_message("What?", png("red"))], max_tokens=3)
        assert reply.usage.completion_tokens == 3


def test_a_client_that_goes_away_stops_its_row(tiny, monkeypatch):
    from eve_vlm.serve import batcher as batcher_module

    finished, real = [], batcher_module.generate

    def spy(*args, **kwargs):
        finished.extend(real(*args, **kwargs))
        return finished[-1:]

    monkeypatch.setattr(batcher_module, "generate", spy)
    app = create_app(*tiny, model_name="tiny-eve")
    with serve_in_thread(app) as base:
        body = {"model": "tiny-eve", "messages": [{"role": "user", "content": "Go on"}], "max_tokens": 1500,
                "stream": True}
        with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ") and next(lines) == ""  # the role chunk arrived; now hang up
        # Generation ends either way (cancelled, or all 1500 tokens): wait for it, however loaded the
        # machine is; a missed cancellation shows as completion_tokens == 1500, not as a timeout.
        deadline = time.monotonic() + 600
        while not finished and time.monotonic() < deadline:
            time.sleep(0.05)
    assert finished[0].finish_reason == "cancelled" and finished[0].completion_tokens < 1500
