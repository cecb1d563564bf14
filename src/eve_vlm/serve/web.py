"""`eve web`: a Gradio chat page (image upload, streamed answers) on the same batching worker as
`eve serve`, so concurrent users are decoded together."""

import os
import queue

from ..errors import EveError
from ..extras import needs
from ..infer import GenerationOptions, encode
from ..processing.chat import IMAGE_PART, image_part, text_part
from .batcher import Batcher, QueueFull


def _parts(content) -> list[dict]:
    """A Gradio chat message's content (text, a file, or a list of them) -> our content parts."""
    parts = []
    for c in content if isinstance(content, (list, tuple)) else [content]:
        if isinstance(c, str):
            parts.append(text_part(c))
        elif isinstance(c, dict) and c.get("type") == "text":
            parts.append(text_part(c.get("text", "")))
        elif isinstance(c, dict):  # {"type": "file", "file": {"path": ...}} or {"path": ...}
            path = (c.get("file") or c).get("path")
            if path:
                parts.append(image_part(path))
    return parts


def _messages(message: dict, history: list[dict]) -> list[dict]:
    """Gradio's history + the new MultimodalTextbox value -> OpenAI/HF-style messages."""
    files = [f if isinstance(f, str) else f.get("path") for f in message.get("files", [])]
    turns = [{"role": h["role"], "content": _parts(h["content"])} for h in history
             if h.get("role") in ("user", "assistant")]
    images = [image_part(f) for f in files if f]
    turns.append({"role": "user", "content": images + [text_part(message.get("text", ""))]})
    messages = []
    for t in turns:  # Gradio shows each upload as a user message of its own: merge turns of one role
        if messages and messages[-1]["role"] == t["role"]:
            messages[-1]["content"] += t["content"]
        else:
            messages.append(t)
    for m in messages:  # images first in a message, as in training (the `eve` template moves them anyway)
        m["content"].sort(key=lambda p: p["type"] != IMAGE_PART)
        if m["role"] == "assistant":
            m["content"] = "".join(p.get("text", "") for p in m["content"])
    return messages


def gradio():
    """The gradio module, imported on first use: its import takes seconds."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    with needs("web", "eve web"):
        import gradio

    return gradio


def build(model, processor, options: GenerationOptions, max_batch_size: int = 4, max_queue: int = 16):
    gr = gradio()
    batcher = Batcher(model, processor, max_batch_size, max_queue)

    def respond(message, history):
        try:
            prompt = encode(processor, _messages(message, history))
        except EveError as exc:
            raise gr.Error(" ".join(str(exc).splitlines())) from None
        events = queue.Queue()
        try:
            job = batcher.submit(prompt, options, lambda *event: events.put(event))
        except QueueFull:
            raise gr.Error("the server is busy, please retry") from None
        text = ""
        try:
            while (event := events.get())[0] == "delta":
                text += event[1]
                yield text
        finally:
            job.cancel()
        if event[0] == "error":
            raise gr.Error(f"generation failed: {event[1]}")
        yield event[1].text

    textbox = gr.MultimodalTextbox(file_types=["image"], file_count="multiple", placeholder="Ask about an image...")
    return gr.ChatInterface(respond, multimodal=True, textbox=textbox, title="eve-vlm",
                            description="Upload an image with the paperclip and ask about it.",
                            concurrency_limit=max_batch_size)


def launch(model, processor, options: GenerationOptions, host: str = "127.0.0.1", port: int = 7860) -> None:
    build(model, processor, options).launch(server_name=host, server_port=port, share=False, ssr_mode=False)
