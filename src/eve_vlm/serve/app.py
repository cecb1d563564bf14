"""OpenAI-compatible HTTP server: POST /v1/chat/completions, GET /v1/models, GET /health.

Requests are validated and encoded (images decoded, prompt tokenized) in the request handler,
so every bad input is a 4xx before it reaches the model; the `Batcher` worker then decodes
concurrent requests together. Every error body has OpenAI's shape
`{"error": {"message", "type", "param", "code"}}`. The conversation rules (roles, their order, what
a prompt needs on each chat template) are `eve_vlm.processing.chat`'s; OpenAI options this server
does not implement, and unknown fields, are 400s that name them.
"""

import asyncio
import contextlib
import dataclasses
import json
import secrets
import time
import urllib.parse
import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from ..errors import EveError, ImageTooLargeError
from ..extras import needs
from ..infer import GenerationOptions, encode
from ..processing import ROLES, load_image
from ..processing.chat import IMAGE_URL_PART
from .batcher import Batcher, QueueFull

with needs("serve", "eve serve"):
    from fastapi import Depends, FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.datastructures import Headers
    from starlette.exceptions import HTTPException


@dataclasses.dataclass
class Limits:
    max_body_bytes: int = 20 << 20
    max_image_bytes: int = 10 << 20
    max_image_pixels: int = 40_000_000  # decoded pixels, checked from the header before decoding
    max_images: int = 8  # per request
    max_prompt_tokens: int | None = None  # default: the model's context length
    default_max_tokens: int = 512
    fetch_timeout_s: float = 10.0


class ApiError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.message, self.type, self.param, self.code), status_code=self.status)


def error_body(message, type="invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _no_nul(text: str) -> str:
    if "\0" in text:
        raise PydanticCustomError("nul_character", "text must not hold NUL characters (\\u0000): remove them")
    return text


def unsupported(*neutral):
    """An OpenAI option this server does not implement. Null or a `neutral` value (one that asks for
    nothing) is accepted; anything else is a 400 naming the option, never silently ignored."""
    hint = "remove it" + "".join(f" or set it to {json.dumps(v)}" for v in neutral[:1])

    def check(value):
        if value is not None and value not in neutral:
            raise PydanticCustomError("unsupported_parameter", "this server does not support it: {hint}",
                                      {"hint": hint})
        return value

    return Annotated[Any, AfterValidator(check)]


Text = Annotated[str, AfterValidator(_no_nul)]


class Body(BaseModel):
    # Unknown fields are errors: a misspelt or unimplemented option must not pass as if it worked.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TextPart(Body):
    type: Literal["text"]
    text: Text


class ImageURL(Body):
    url: str
    detail: unsupported("auto") = None  # the model's own resolution budget always applies


class ImagePart(Body):
    type: Literal[IMAGE_URL_PART]
    image_url: ImageURL


class Message(Body):
    role: Literal[ROLES]
    content: Text | list[Annotated[TextPart | ImagePart, Field(discriminator="type")]] | None = None
    name: unsupported() = None
    tool_calls: unsupported([]) = None
    tool_call_id: unsupported() = None
    function_call: unsupported() = None
    refusal: unsupported() = None


class StreamOptions(Body):
    include_usage: bool = False


class ChatRequest(Body):
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0, le=2)  # greedy by default, unlike OpenAI (1.0)
    top_p: float = Field(1.0, gt=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0)
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = Field(None, ge=-(1 << 63), lt=1 << 63)
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # who asks (OpenAI's abuse monitoring): changes nothing in the reply
    logprobs: unsupported(False) = None
    top_logprobs: unsupported(0) = None
    frequency_penalty: unsupported(0) = None
    presence_penalty: unsupported(0) = None
    logit_bias: unsupported({}) = None
    tools: unsupported([]) = None
    tool_choice: unsupported("none") = None
    parallel_tool_calls: unsupported() = None
    functions: unsupported([]) = None
    function_call: unsupported("none") = None
    response_format: unsupported({"type": "text"}) = None
    modalities: unsupported(["text"]) = None
    audio: unsupported() = None
    prediction: unsupported() = None
    reasoning_effort: unsupported() = None
    verbosity: unsupported() = None
    web_search_options: unsupported() = None
    service_tier: unsupported() = None
    store: unsupported(False) = None
    metadata: unsupported() = None


class BodyLimit:
    """413 for a body over `max_bytes`: at once when its Content-Length says so (nothing of it is
    read), else as soon as the chunks received pass the limit. FastAPI's own `max_body_size`
    answers the first case in plain text, not in OpenAI's error shape."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        error = ApiError(413, f"the request body is larger than {self.max_bytes} bytes", code="request_too_large")
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            return await error.response()(scope, receive, send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise error
            return message

        await self.app(scope, counted, send)


def create_app(model, processor, model_name: str, api_key: str | None = None, max_batch_size: int = 8,
               max_queue: int = 64, limits: Limits | None = None, allow_remote_images=()) -> FastAPI:
    """The FastAPI app; its decoding worker starts now and stops with the app's lifespan."""
    limits = limits or Limits()
    context = model.config.max_position_embeddings
    max_prompt = min(limits.max_prompt_tokens or context, context)
    allowed_hosts = {h.strip().lower() for h in allow_remote_images if h.strip()}
    batcher = Batcher(model, processor, max_batch_size, max_queue)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()

    app = FastAPI(title="eve-vlm", lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    app.state.batcher = batcher

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return exc.response()

    @app.exception_handler(HTTPException)
    async def _http_error(request, exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}
        return JSONResponse(error_body(str(exc.detail), code=code.get(exc.status_code)), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _server_error(request, exc: Exception):
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500)

    def authorized(request: Request) -> None:
        given = request.headers.get("authorization", "").encode()
        if api_key and not secrets.compare_digest(given, f"Bearer {api_key}".encode()):
            raise ApiError(401, "invalid or missing API key (send 'Authorization: Bearer KEY')",
                           code="invalid_api_key")

    @app.get("/health")
    async def health():
        status = 200 if batcher.alive else 503
        return JSONResponse({"status": "ok" if batcher.alive else "worker stopped", "model": model_name,
                             "queued": batcher.queued, "batches": batcher.batches}, status_code=status)

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "eve-vlm"}]}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)])
    async def chat_completions(request: Request):
        # The body is parsed here, not by FastAPI, so that authentication comes first.
        try:
            req = ChatRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            raise _invalid(exc) from None
        if req.model != model_name:
            raise ApiError(404, f"model {req.model!r} does not exist; this server has {model_name!r}", param="model",
                           code="model_not_found")
        messages = [m.model_dump(include={"role", "content"}, exclude_none=True) for m in req.messages]
        images = await _images(messages, limits, allowed_hosts)
        try:
            prompt = await run_in_threadpool(encode, processor, messages, images)
        except EveError as exc:
            raise ApiError(400, str(exc), param="messages") from None
        n_prompt = len(prompt.input_ids)
        default = max(min(limits.default_max_tokens, context - n_prompt), 1)
        max_new = req.max_completion_tokens or req.max_tokens or default
        if n_prompt > max_prompt or n_prompt + max_new > context:
            raise ApiError(400, f"the prompt has {n_prompt} tokens (images included) and {max_new} new tokens were "
                           f"asked for; the limits are {max_prompt} prompt tokens and {context} in all",
                           param="messages", code="context_length_exceeded")
        options = GenerationOptions(max_new, req.temperature, req.top_p, req.repetition_penalty,
                                    (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ()), req.seed)
        events, loop = asyncio.Queue(), asyncio.get_running_loop()
        try:
            job = batcher.submit(prompt, options, lambda *event: loop.call_soon_threadsafe(events.put_nowait, event))
        except QueueFull as exc:
            raise ApiError(429, f"server busy: {exc}; retry later", "rate_limit_error", code="queue_full") from None
        reply = dict(id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=model_name)
        if req.stream:
            usage = req.stream_options is not None and req.stream_options.include_usage
            return StreamingResponse(_sse(job, events, reply, usage), media_type="text/event-stream")
        try:
            while (event := await events.get())[0] == "delta":
                pass
        finally:
            job.cancel()  # no-op once done; stops decoding if this handler is cancelled
        kind, value = event
        if kind == "error":
            raise ApiError(500, f"generation failed: {type(value).__name__}: {value}", "server_error")
        return {**reply, "object": "chat.completion", "usage": _usage(value), "choices": [{
            "index": 0, "message": {"role": "assistant", "content": value.text}, "finish_reason": value.finish_reason}]}

    return app


def _invalid(exc: ValidationError) -> ApiError:
    # With unions pydantic reports one error per alternative: the deepest one that is not a
    # mismatch of the input's type with an alternative says most.
    err = max(exc.errors(include_url=False), key=lambda e: (not e["type"].endswith("_type"), len(e["loc"])))
    if err["type"] == "json_invalid":
        return ApiError(400, f"the body is not valid JSON: {err['msg']}", code="invalid_json")
    raw = err["loc"]  # less pydantic's names of union alternatives ("str", "list[...]") and of tags
    is_tag = [k >= 2 and isinstance(raw[k - 1], int) and "tagged-union[" in str(raw[k - 2]) for k in range(len(raw))]
    param = ".".join(str(p) for p, tag in zip(raw, is_tag) if not (tag or p == "str" or "[" in str(p))) or None
    if err["type"] == "extra_forbidden":
        return ApiError(400, f"unknown parameter {param!r}", param=param, code="unknown_parameter")
    code = "unsupported_parameter" if err["type"] == "unsupported_parameter" else "invalid_value"
    return ApiError(400, f"{param or 'body'}: {err['msg']}", param=param, code=code)


async def _images(messages: list[dict], limits: Limits, allowed_hosts: set[str]) -> list:
    """The decoded images of the image_url parts. data: URIs are decoded here and http(s) URLs
    fetched when their host is allowed; nothing else is accepted (a plain path would read the
    server's own files). Decoding here, under the caps, lets an error name the exact part."""
    urls = [(f"messages.{i}.content.{j}.image_url.url", part["image_url"]["url"])
            for i, m in enumerate(messages) if isinstance(m.get("content"), list)
            for j, part in enumerate(m["content"]) if part["type"] == IMAGE_URL_PART]
    if len(urls) > limits.max_images:
        raise ApiError(400, f"{len(urls)} images in one request; the limit is {limits.max_images}", param="messages",
                       code="too_many_images")
    images = []
    for param, url in urls:
        if not url.startswith("data:"):
            try:
                parts = urllib.parse.urlsplit(url)
            except ValueError as exc:  # e.g. an unclosed [IPv6] host
                raise ApiError(400, f"malformed image URL: {exc}", param=param, code="invalid_image_url") from None
            if parts.scheme not in ("http", "https"):
                raise ApiError(400, "an image URL must be a data: URI (base64) or an http(s) URL", param=param,
                               code="invalid_image_url")
            if (parts.hostname or "").lower() not in allowed_hosts:
                raise ApiError(400, f"remote images from {parts.hostname!r} are not allowed; send the image as a "
                               "base64 data: URI (the server's --allow-remote-images lists the hosts it fetches from)",
                               param=param, code="image_url_not_allowed")
            url = await _fetch(url, param, limits)
        try:
            images.append(await run_in_threadpool(load_image, url, limits.max_image_pixels, limits.max_image_bytes))
        except ImageTooLargeError as exc:
            raise ApiError(400, str(exc), param=param, code="image_too_large") from None
        except EveError as exc:
            raise ApiError(400, str(exc), param=param, code="invalid_image") from None
    return images


async def _fetch(url: str, param: str, limits: Limits) -> bytes:
    with needs("serve", "fetching remote images"):
        import httpx

    data = bytearray()
    try:  # no redirects: they could lead to a host that is not allowed
        async with httpx.AsyncClient(timeout=limits.fetch_timeout_s, follow_redirects=False) as client:
            async with client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise ApiError(400, f"fetching the image gave HTTP {response.status_code}", param=param,
                                   code="image_fetch_failed")
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > limits.max_image_bytes:
                        raise ApiError(400, f"the image is larger than {limits.max_image_bytes} bytes", param=param,
                                       code="image_too_large")
    except httpx.InvalidURL as exc:
        raise ApiError(400, f"malformed image URL: {exc}", param=param, code="invalid_image_url") from None
    except httpx.HTTPError as exc:
        raise ApiError(400, f"cannot fetch the image: {type(exc).__name__}", param=param,
                       code="image_fetch_failed") from None
    return bytes(data)


def _usage(completion) -> dict:
    return {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens}


async def _sse(job, events: asyncio.Queue, reply: dict, include_usage: bool):
    def chunk(delta: dict, finish_reason=None, **extra) -> str:
        body = {**reply, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra}
        return f"data: {json.dumps(body)}\n\n"

    extra = {"usage": None} if include_usage else {}
    try:
        yield chunk({"role": "assistant", "content": ""}, **extra)
        while (event := await events.get())[0] == "delta":
            yield chunk({"content": event[1]}, **extra)
        kind, value = event
        if kind == "error":
            yield f"data: {json.dumps(error_body(f'generation failed: {value}', 'server_error'))}\n\n"
        else:
            yield chunk({}, value.finish_reason, **extra)
            if include_usage:
                usage = {**reply, "object": "chat.completion.chunk", "choices": [], "usage": _usage(value)}
                yield f"data: {json.dumps(usage)}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()  # the client went away: stop decoding its row
