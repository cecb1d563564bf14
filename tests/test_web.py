"""`eve web`: the Gradio page renders in headless Chromium with its controls, and a chat with an
image goes through it; Gradio's chat history maps onto our messages."""

import os
import subprocess
import tempfile

import pytest
from PIL import Image, ImageStat

from eve_vlm.serve.web import _messages
from tiny import eve_process, free_port, png

CHROMIUM = "/usr/bin/chromium"


def test_gradio_history_becomes_messages():
    history = [  # Gradio 6: each upload is its own user message, content is a list of parts
        {"role": "user", "content": [{"type": "file", "file": {"path": "/tmp/a.png"}}]},
        {"role": "user", "content": [{"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
    ]
    message = {"text": "And this one?", "files": ["/tmp/b.png"]}
    def user(image, text):
        return {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}

    assert _messages(message, history) == [user("/tmp/a.png", "What is it?"),
                                           {"role": "assistant", "content": "A cat."},
                                           user("/tmp/b.png", "And this one?")]


def chromium(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--virtual-time-budget=15000",
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]  # the page may load nothing else
        return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Chromium: apt-get install -y chromium")
def test_web_page_in_headless_chromium(tiny_dir, tmp_path):
    port = free_port()
    with eve_process("web", "--model", tiny_dir, "--port", str(port), "--max-new-tokens", "5", port=port):
        url = f"http://127.0.0.1:{port}/"
        shot = tmp_path / "page.png"
        done = chromium(f"--screenshot={shot}", "--window-size=1280,900", url)
        assert shot.exists(), done.stderr[-2000:]
        page = Image.open(shot).convert("L")
        assert page.size == (1280, 900)
        assert ImageStat.Stat(page).stddev[0] > 5 and len(page.getcolors(1 << 16)) > 20  # not blank

        dom = chromium("--dump-dom", url).stdout
        assert "eve-vlm" in dom and 'placeholder="Ask about an image..."' in dom  # the title and the textbox
        assert 'type="file"' in dom and 'accept="image/*"' in dom  # the image upload
        assert 'data-testid="bot"' in dom or "Chatbot" in dom  # the chat window

        from gradio_client import Client, handle_file

        (tmp_path / "red.png").write_bytes(png("red"))
        answer = Client(url, verbose=False).predict(
            message={"text": "What is it?", "files": [handle_file(str(tmp_path / "red.png"))]}, api_name="/respond")
        from eve_vlm.infer import GenerationOptions, encode, generate, load

        model, processor = load(tiny_dir)
        msg = [{"role": "user", "content": [{"type": "image", "image": str(tmp_path / "red.png")},
                                            {"type": "text", "text": "What is it?"}]}]
        [want] = generate(model, processor, [encode(processor, msg)], GenerationOptions(max_new_tokens=5))
        assert answer == want.text
