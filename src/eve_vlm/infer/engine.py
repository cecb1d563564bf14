"""Inference core: load a saved folder, encode chat prompts, batched generation with per-row stops
and streaming.

Every front end (`eve chat`, `eve infer`, `eve serve`, `eve web`) goes through `generate`. Rows
of one batch share the sampling settings (one `model.generate` call) but each has its own
`max_new_tokens`, stop strings and text listener: those are handled by `_Rows`, a stopping
criterion that transformers calls once per decoding step with every row. (transformers'
streamers only take batch size 1 and its `stop_strings` apply to the whole batch.)
"""

import dataclasses
import os
from collections.abc import Callable, Sequence

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from ..dtypes import torch_dtype
from ..errors import EveError
from ..model.prefix import common_prefix, shared_cache
from ..processing.chat import IMAGE_PARTS, IMAGE_URL_PART, INPUT_IMAGE_PART


def load(model_dir, dtype=None, device=None):
    """(model, processor) from a folder holding a saved model and EveProcessor.

    `dtype`: a torch dtype, "bf16" / "fp16" / "fp32" or None (float32). `device`: default cuda
    when available, else cpu."""
    from ..model import EveForConditionalGeneration
    from ..processing import EveProcessor

    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise EveError(f"{model_dir}: no config.json here; expected a folder written by save_pretrained")
    if isinstance(dtype, str):
        dtype = torch_dtype(dtype)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = EveForConditionalGeneration.from_pretrained(model_dir, dtype=dtype or torch.float32)
    try:
        processor = EveProcessor.from_pretrained(model_dir)
    except OSError as exc:
        raise EveError(f"{model_dir}: no processor files ({exc}); save the EveProcessor next to the model") from exc
    if processor.image_token_id != model.config.image_token_id:
        raise EveError(f"{model_dir}: the tokenizer's image token id {processor.image_token_id} is not the "
                       f"model's image_token_id {model.config.image_token_id}")
    return model.to(device).eval(), processor


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
    """Decoding settings of one request. temperature 0 = greedy (the default)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise EveError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.temperature <= 2:
            raise EveError(f"temperature must be in [0, 2], got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise EveError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise EveError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))

    @property
    def sampling(self) -> bool:
        return self.temperature > 0

    @property
    def batch_key(self):
        """Options with equal keys can share one batch; None = must run alone (seeded sampling is
        reproducible only when no other row draws from the same random stream)."""
        if not self.sampling:
            return ("greedy", self.repetition_penalty)
        if self.seed is not None:
            return None
        return ("sample", self.temperature, self.top_p, self.repetition_penalty)

    def generate_kwargs(self) -> dict:
        kwargs = dict(do_sample=self.sampling, repetition_penalty=self.repetition_penalty)
        if self.sampling:  # top_k=0: OpenAI-style sampling has no top-k cut (transformers' default is 50)
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=0)
        return kwargs


@dataclasses.dataclass
class Prompt:
    """One encoded conversation: its token ids (image placeholders expanded) and images."""

    input_ids: list[int]
    pixel_values: list[torch.Tensor]


@dataclasses.dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" (end token or stop string), "length" or "cancelled"
    prompt_tokens: int
    completion_tokens: int


def image_sources(messages: Sequence[dict]) -> list:
    """The image of every image part of OpenAI/HF-style messages, in order: `{"type": "image",
    "image": x}` (x: path, PIL image, bytes, ...), `{"type": "image_url", "image_url": {"url": u}}`."""
    sources = []
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        for part in content if isinstance(content, list) else ():
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in IMAGE_PARTS:
                continue
            src = part.get(IMAGE_URL_PART if kind == INPUT_IMAGE_PART else kind)
            if isinstance(src, dict):
                src = src.get("url")
            if src is None:
                raise EveError(f"an {kind!r} content part without an image: {str(part)[:80]}")
            sources.append(src)
    return sources


def encode(processor, messages: Sequence[dict], images: Sequence | None = None) -> Prompt:
    """Messages (+ their images, default: taken from the image parts) -> Prompt."""
    images = image_sources(messages) if images is None else list(images)
    inputs = processor(messages=list(messages), images=images or None)
    return Prompt(inputs["input_ids"][0].tolist(), list(inputs["pixel_values"]))


def end_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a reply: the tokenizer's eos, `<|im_end|>` (ChatML) and the model's own."""
    ids = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    configured = model.generation_config.eos_token_id
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if isinstance(i, int) and 0 <= i < model.config.vocab_size
                  and i != tokenizer.unk_token_id)


class _Row:
    """One row's text, decoded incrementally, and its stop conditions.

    Only new tokens are decoded, with the previous token(s) as left context (as vLLM does), so
    tokenizers that drop a leading space when decoding a lone token stay exact, and a token that
    ends inside a UTF-8 character waits for the rest. Text that may be the start of a stop string
    is held back, so the streamed pieces always add up to the final text."""

    def __init__(self, tokenizer, end_ids, options: GenerationOptions):
        self.tokenizer, self.end_ids, self.options = tokenizer, end_ids, options
        self.ids, self.text, self.sent, self.n_tokens = [], "", 0, 0
        self.prefix = self.read = 0
        self.hold = max(map(len, options.stop), default=1) - 1
        self.finish = None

    def _decode(self, a: int, b: int | None = None) -> str:
        return self.tokenizer.decode(self.ids[a:b], skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token: int) -> str:
        """Take the next generated token; return the text that can be shown now."""
        self.n_tokens += 1
        if token in self.end_ids:
            self.finish = "stop"
        else:
            self.ids.append(token)
        if self.finish is None and self.n_tokens >= self.options.max_new_tokens:
            self.finish = "length"
        if self.read < len(self.ids):
            before, after = self._decode(self.prefix, self.read), self._decode(self.prefix)
            if self.finish or not after.endswith("\ufffd"):
                start = max(len(self.text) - self.hold, 0)
                self.text += after[len(before):]
                self.prefix, self.read = self.read, len(self.ids)
                hits = [i for i in (self.text.find(s, start) for s in self.options.stop) if i >= 0]
                if hits:
                    self.text, self.finish = self.text[:min(hits)], "stop"
        ready = len(self.text) if self.finish else len(self.text) - self.hold
        delta = self.text[self.sent:max(ready, self.sent)]
        self.sent += len(delta)
        return delta


class _Rows(StoppingCriteria):
    def __init__(self, rows: list[_Row], on_delta):
        self.rows, self.on_delta = rows, on_delta

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        for i, (row, token) in enumerate(zip(self.rows, input_ids[:, -1].tolist())):
            if row.finish is None:
                delta = row.push(token)
                if self.on_delta is not None and self.on_delta(i, delta) is False:
                    row.finish = "cancelled"
        return torch.tensor([r.finish is not None for r in self.rows], device=input_ids.device)


def generate(model, processor, prompts: Sequence[Prompt], options: GenerationOptions | Sequence[GenerationOptions],
             on_delta: Callable[[int, str], bool | None] | None = None) -> list[Completion]:
    """Decode a batch of prompts (left-padded) in one `model.generate` call.

    `options`: one for all rows or one per row; rows must share `batch_key`. `on_delta(i, text)`
    is called after every decoding step of each unfinished row with its new text ("" when none is
    ready); returning False stops that row (e.g. its client went away)."""
    options = [options] * len(prompts) if isinstance(options, GenerationOptions) else list(options)
    keys = {o.batch_key for o in options}
    if len(options) != len(prompts) or not prompts or len(keys) > 1 or (None in keys and len(prompts) > 1):
        raise ValueError("generate takes one or more prompts with one option set each, all sharing batch_key")
    tokenizer = processor.tokenizer
    end_ids = end_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_ids[0]
    # The rows' common text prefix (a chat template's system prompt) is computed once; the rest
    # is left-padded after it: pads between prefix and row are masked and skipped by positions.
    shared = common_prefix([p.input_ids for p in prompts], model.config.image_token_id)
    length = max(len(p.input_ids) for p in prompts)
    input_ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)
    input_ids[:, :shared] = torch.tensor(prompts[0].input_ids[:shared])
    attention_mask[:, :shared] = 1
    for i, p in enumerate(prompts):
        input_ids[i, length - len(p.input_ids) + shared:] = torch.tensor(p.input_ids[shared:])
        attention_mask[i, length - len(p.input_ids) + shared:] = 1
    pixel_values = [pv for p in prompts for pv in p.pixel_values]
    rows = [_Row(tokenizer, set(end_ids), o) for o in options]
    if options[0].seed is not None:
        torch.manual_seed(options[0].seed)
    with torch.inference_mode():
        cache = shared_cache(model, input_ids[:1, :shared].to(model.device), len(prompts)) if shared else None
        model.generate(
            input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device), cache=cache,
            pixel_values=pixel_values or None, max_new_tokens=max(o.max_new_tokens for o in options),
            eos_token_id=end_ids, pad_token_id=pad_id, stopping_criteria=StoppingCriteriaList([_Rows(rows, on_delta)]),
            **options[0].generate_kwargs(),
        )
    return [Completion(r.text, r.finish or "length", len(p.input_ids), r.n_tokens) for r, p in zip(rows, prompts)]
