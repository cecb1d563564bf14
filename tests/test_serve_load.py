"""Load: 32 concurrent clients are all answered, batched, with the same answers as one at a time;
past the queue bound a client gets 429 at once; the server stays healthy."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from eve_vlm.serve import batcher as batcher_module
from eve_vlm.serve import create_app
from tiny import image_message, png, serve_in_thread

COLORS = ["red", "green", "blue", "white", "black", "yellow", "purple", "orange"]


def request(i: int) -> dict:
    """32 different requests: text or 1-2 images, different lengths and max_tokens."""
    text = f"Question {i}: " + "tell me more " * (i % 5)
    if i % 3 == 0:
        message = {"role": "user", "content": text}
    else:
        message = image_message(text, *[png(COLORS[(i + k) % 8], (32 + 16 * (i % 4), 64)) for k in range(i % 3)])
    return dict(model="tiny", messages=[message], max_tokens=4 + i % 9, temperature=0)


@pytest.fixture
def batch_sizes(monkeypatch):
    """Records the size of every batch the worker decodes."""
    sizes, real = [], batcher_module.generate

    def spy(model, processor, prompts, *args, **kwargs):
        sizes.append(len(prompts))
        return real(model, processor, prompts, *args, **kwargs)

    monkeypatch.setattr(batcher_module, "generate", spy)
    return sizes


def test_32_concurrent_clients_equal_sequential(tiny, batch_sizes):
    with serve_in_thread(create_app(*tiny, model_name="tiny", max_batch_size=8, max_queue=64)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0, timeout=120)
        start = threading.Barrier(32)

        def ask(i):
            start.wait(timeout=60)
            return client.chat.completions.create(**request(i))

        with ThreadPoolExecutor(32) as pool:
            concurrent = list(pool.map(ask, range(32)))
        assert len(concurrent) == 32 and max(batch_sizes) > 1 and sum(batch_sizes) == 32
        sequential = [client.chat.completions.create(**request(i)) for i in range(32)]
        for i, (a, b) in enumerate(zip(concurrent, sequential)):
            assert a.choices[0].message.content == b.choices[0].message.content, i
            assert a.usage == b.usage and a.usage.completion_tokens <= request(i)["max_tokens"]
        assert len({r.choices[0].message.content for r in concurrent}) > 16  # the answers really differ
        assert httpx.get(url + "/health", timeout=30).json()["queued"] == 0


def test_overload_gets_429_at_once_and_the_rest_is_served(tiny, monkeypatch):
    gate, real = threading.Event(), batcher_module.generate

    def held(*args, **kwargs):  # the worker waits here, so the queue fills deterministically
        assert gate.wait(timeout=120)
        return real(*args, **kwargs)

    monkeypatch.setattr(batcher_module, "generate", held)
    app = create_app(*tiny, model_name="tiny", max_batch_size=1, max_queue=2)
    batcher = app.state.batcher
    with serve_in_thread(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0, timeout=120)
        with ThreadPoolExecutor(3) as pool:
            running = [pool.submit(client.chat.completions.create, **request(1))]
            _wait(lambda: batcher.batches == 1)  # the worker holds the first request
            running += [pool.submit(client.chat.completions.create, **request(i)) for i in (2, 3)]
            _wait(lambda: batcher.queued == 2)
            with pytest.raises(openai.RateLimitError) as err:
                client.chat.completions.create(**request(4))
            assert err.value.status_code == 429 and err.value.body["code"] == "queue_full"
            assert set(err.value.body) == {"message", "type", "param", "code"}
            gate.set()
            assert all(f.result(timeout=120).choices[0].message.content for f in running)
        assert httpx.get(url + "/health", timeout=30).json() == {"status": "ok", "model": "tiny", "queued": 0,
                                                                 "batches": 3}
        assert client.chat.completions.create(**request(4)).usage.completion_tokens > 0


def _wait(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.02)
