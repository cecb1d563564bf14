"""Predictors: (prompt text, image path) pairs -> replies, from a local model folder or an
OpenAI-compatible endpoint. Both build the same single-turn user message (the image, then the
text) and decode greedily, so a task scores a model the same way through either path.

`predict` returns one entry per item: the reply text, or the exception that item raised (an
unreadable image, a prompt too long, a failed request): one bad record never stops a run.
"""

import base64
import concurrent.futures
import mimetypes
import os
import urllib.parse

from ..errors import EveError
from ..extras import needs
from ..processing.chat import IMAGE_URL_PART, image_part, text_part


def user_message(text: str, image: dict) -> list[dict]:
    return [{"role": "user", "content": [image, text_part(text)]}]


class DirectPredictor:
    """A saved EVE folder, run in this process: batched, left-padded, greedy generation that
    stops at the end-of-turn token (`eve_vlm.infer.generate`)."""

    def __init__(self, model_dir: str, dtype: str | None = None, device: str | None = None):
        from .engine import load

        self.model, self.processor = load(model_dir, dtype=dtype, device=device)
        self.name = os.path.basename(os.path.normpath(model_dir))
        self.settings = {"mode": "direct", "model": os.path.abspath(model_dir), "dtype": str(self.model.dtype),
                         "template": self.processor.template}

    def _encode(self, text: str, image: str, max_new_tokens: int):
        from .engine import encode

        prompt = encode(self.processor, user_message(text, image_part()), images=[image])
        limit = self.model.config.max_position_embeddings
        if len(prompt.input_ids) + max_new_tokens > limit:
            raise EveError(f"too long: {len(prompt.input_ids)} prompt tokens + {max_new_tokens} new > {limit}")
        return prompt

    def _generate(self, prompts, max_new_tokens: int) -> list[str]:
        from .engine import GenerationOptions, generate

        return [c.text for c in generate(self.model, self.processor, prompts, GenerationOptions(max_new_tokens))]

    def predict(self, items: list[tuple[str, str]], max_new_tokens: int) -> list:
        results, ready = [None] * len(items), []
        for i, (text, image) in enumerate(items):
            try:
                ready.append((i, self._encode(text, image, max_new_tokens)))
            except Exception as exc:  # noqa: BLE001 -- recorded as this item's error
                results[i] = exc
        try:
            texts = self._generate([p for _, p in ready], max_new_tokens) if ready else []
        except Exception:  # noqa: BLE001 -- find the row(s) at fault: rerun one by one
            texts = []
            for _, p in ready:
                try:
                    texts += self._generate([p], max_new_tokens)
                except Exception as exc:  # noqa: BLE001
                    texts.append(exc)
        for (i, _), text in zip(ready, texts):
            results[i] = text
        return results


def _api_base(url: str) -> str:
    """"http://host:8000" -> "http://host:8000/v1"; a URL with a path is kept as given."""
    url = url.rstrip("/")
    return url + "/v1" if urllib.parse.urlparse(url).path in ("", "/") else url


class EndpointPredictor:
    """An OpenAI-compatible /v1/chat/completions server (`eve serve`, vLLM, SGLang, ...). Images go
    as base64 data URIs of the original file bytes, so the server decodes the same pixels."""

    def __init__(self, url: str, api_key: str | None = None, model: str | None = None, timeout: float = 600):
        with needs("eval", "evaluating an endpoint"):
            import openai

        api_key = api_key or os.environ.get("OPENAI_API_KEY") or "none"  # the client insists on one
        self.client = openai.OpenAI(base_url=_api_base(url), api_key=api_key, timeout=timeout, max_retries=2)
        if model is None:  # the server's only / first model
            try:
                model = self.client.models.list().data[0].id
            except (openai.OpenAIError, IndexError) as exc:
                raise EveError(f"cannot list the models of {url}: {exc} (is the server up? "
                               "--endpoint-model NAME skips this query)") from exc
        self.name = model
        self.settings = {"mode": "endpoint", "endpoint": _api_base(url), "model": model}

    def _one(self, text: str, image: str, max_new_tokens: int) -> str:
        with open(image, "rb") as f:
            data = base64.b64encode(f.read()).decode()
        mime = mimetypes.guess_type(image)[0] or "application/octet-stream"
        part = {"type": IMAGE_URL_PART, IMAGE_URL_PART: {"url": f"data:{mime};base64,{data}"}}
        reply = self.client.chat.completions.create(
            model=self.name, messages=user_message(text, part), max_tokens=max_new_tokens, temperature=0)
        return reply.choices[0].message.content or ""

    def predict(self, items: list[tuple[str, str]], max_new_tokens: int) -> list:
        # One request per item, all in flight at once: the server batches them.
        with concurrent.futures.ThreadPoolExecutor(max(1, len(items))) as pool:
            futures = [pool.submit(self._one, text, image, max_new_tokens) for text, image in items]
        return [f.exception() or f.result() for f in futures]
