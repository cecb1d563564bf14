"""EveProcessor: text / chat messages + images -> model inputs.

The contract with the model: each image becomes N = 1 + h*(w+1) copies of `image_token_id` in
`input_ids`, in image order, so the model never changes the sequence length. Users write `<image>`
in text; the processor swaps it for the tokenizer's placeholder token (`<|image_pad|>` for Qwen,
`<image>` otherwise) and expands it.
"""

import copy

import torch
from transformers import BatchFeature
from transformers.processing_utils import ProcessorMixin

from eve_vlm.errors import BadSampleError, EveError
from eve_vlm.processing.chat import (
    IGNORE_INDEX, IMAGE_MARKER, TEMPLATES, TURNS, count_images, normalize_messages, render, split_turns,
    tokenize_with_labels,
)
from eve_vlm.processing.tokenizers import ensure_image_token


class EveProcessor(ProcessorMixin):
    def __init__(self, image_processor, tokenizer, template: str = "eve", chat_template=None):
        # `chat_template` only exists because from_pretrained passes the folder's template along;
        # the `native` template always uses the tokenizer's own.
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        if template not in TEMPLATES:
            raise ValueError(f"unknown template {template!r}; choose from {TEMPLATES}")
        self.template = template
        self.image_token_id = ensure_image_token(tokenizer)
        self.image_token = tokenizer.convert_ids_to_tokens(self.image_token_id)

    def __call__(self, text=None, images=None, messages=None, return_tensors="pt", padding=True,
                 padding_side="left", add_generation_prompt=True, template=None) -> BatchFeature:
        """Prompts for generation: `text` (a string or list, already formatted, `<image>` markers) or
        `messages` (one conversation or a list of them, rendered with `template` + generation prompt).

        `images`: one image, a flat list (consumed in marker order across the batch) or one list per
        sample. Returns input_ids [B, L], attention_mask [B, L] (padded on `padding_side`) and
        pixel_values (a list of [3, H, W], in placeholder order)."""
        if (text is None) == (messages is None):
            raise ValueError("give exactly one of text= or messages=")
        if text is not None:
            prompts = [text] if isinstance(text, str) else list(text)
            counts = [p.count(IMAGE_MARKER) for p in prompts]
            prompts = [p.replace(IMAGE_MARKER, self.image_token) for p in prompts]
        else:
            single = not messages or isinstance(messages[0], dict)
            convs = [normalize_messages(c) for c in ([messages] if single else messages)]
            counts = [count_images(m) for m in convs]
            prompts = [render(m, template or self.template, self.tokenizer, self.image_token, add_generation_prompt)[0]
                       for m in convs]
        if not prompts:
            raise ValueError("empty batch: no prompt given")
        per_sample = _split_images(images, counts)
        vision = self._images([im for ims in per_sample for im in ims])
        n_tokens, rows = iter(vision["num_image_tokens"]), []
        for i, ids in enumerate(self.tokenizer(prompts, add_special_tokens=False)["input_ids"]):
            if not ids:  # the model cannot run on zero tokens
                raise BadSampleError("empty_prompt", "the prompt gives no token: nothing to generate from",
                                     f"batch[{i}]")
            rows.append(self._expand(ids, [next(n_tokens) for _ in per_sample[i]], sample_id=f"batch[{i}]")[0])
        length = max(map(len, rows))
        if not padding and any(len(r) != length for r in rows):
            raise ValueError("prompts have different lengths: use padding=True")
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        input_ids, attention_mask = [], []
        for r in rows:
            pad, ones = [pad_id] * (length - len(r)), [1] * len(r)
            input_ids.append(pad + r if padding_side == "left" else r + pad)
            attention_mask.append([0] * len(pad) + ones if padding_side == "left" else ones + [0] * len(pad))
        if return_tensors == "pt":
            input_ids, attention_mask = torch.tensor(input_ids), torch.tensor(attention_mask)
        elif return_tensors is not None:
            raise ValueError(f"return_tensors must be 'pt' or None, got {return_tensors!r}")
        return BatchFeature({"input_ids": input_ids, "attention_mask": attention_mask,
                             "pixel_values": list(vision["pixel_values"])})

    def for_inference(self) -> "EveProcessor":
        """A copy (sharing the tokenizer) that resizes images with the inference rule: the processor a
        saved model folder carries, whatever rule the training used, since the training rule never
        upscales and a served model would see small images smaller than it was meant to."""
        served = copy.copy(self)
        served.image_processor = copy.copy(self.image_processor)
        served.image_processor.resize_mode = "inference"
        return served

    def encode_conversation(self, conversation, images=(), template: str | None = None, sample_id: str | None = None,
                            max_length: int | None = None, truncation: str = "drop", turns: str = "joint") -> dict:
        """One training sample -> input_ids [L], labels [L] (IGNORE_INDEX except the assistant replies
        and their end token), pixel_values (list of [3, H, W]) and num_image_tokens.

        turns="independent": each question-answer pair is its own row with the record's images
        (`split_turns`); the sample holds `rows` ([{input_ids, labels}], one per pair) instead of
        input_ids / labels, and the images are processed once.

        Over `max_length`: truncation="drop" raises BadSampleError("too_long"); "text" cuts the text
        after the last image (an image block is never cut; still too long is an error)."""
        if truncation not in ("drop", "text"):
            raise ValueError(f"truncation must be 'drop' or 'text', got {truncation!r}")
        if turns not in TURNS:
            raise ValueError(f"unknown turns {turns!r}; choose from {TURNS}")
        images = list(images) if isinstance(images, (list, tuple)) else [] if images is None else [images]
        messages = normalize_messages(conversation, sample_id, num_images=len(images), needs_reply=True)
        vision = self._images(images, sample_id)
        n_tokens = list(vision["num_image_tokens"])
        convs = split_turns(messages, sample_id) if turns == "independent" else [messages]
        rows = [self._encode_row(m, n_tokens, template, sample_id, max_length, truncation) for m in convs]
        out = {"pixel_values": list(vision["pixel_values"]), "num_image_tokens": n_tokens}
        return {"rows": rows, **out} if turns == "independent" else {**rows[0], **out}

    def _encode_row(self, messages, n_tokens, template, sample_id, max_length, truncation) -> dict:
        text, spans = render(messages, template or self.template, self.tokenizer, self.image_token, False, sample_id)
        ids, labels = tokenize_with_labels(self.tokenizer, text, spans, sample_id)
        input_ids, labels, starts = self._expand(ids, n_tokens, labels, sample_id)
        if max_length is not None and len(input_ids) > max_length:
            images_end = starts[-1] + n_tokens[-1] if starts else 0
            if truncation == "drop" or images_end > max_length:
                raise BadSampleError("too_long", f"{len(input_ids)} tokens ({sum(n_tokens)} visual, the last image "
                                     f"ends at {images_end}) > max_length {max_length}", sample_id)
            input_ids, labels = input_ids[:max_length], labels[:max_length]
        if all(lab == IGNORE_INDEX for lab in labels):
            raise BadSampleError("no_supervised_tokens", "no assistant token is left to learn from", sample_id)
        return {"input_ids": torch.tensor(input_ids, dtype=torch.long), "labels": torch.tensor(labels, dtype=torch.long)}

    def _images(self, images: list, sample_id=None) -> dict:
        if not images:
            return {"pixel_values": [], "num_image_tokens": []}
        try:
            return self.image_processor(images)
        except BadSampleError as exc:  # unreadable image: name the sample
            raise BadSampleError(exc.reason, str(exc), sample_id) from exc
        except EveError as exc:  # ImageTooLargeError
            raise BadSampleError("image_too_large", str(exc), sample_id) from exc

    def _expand(self, ids: list[int], num_image_tokens: list[int], labels: list[int] | None = None, sample_id=None):
        """Each image token -> its N copies (labels IGNORE_INDEX there). Returns (ids, labels, block starts)."""
        where = [i for i, t in enumerate(ids) if t == self.image_token_id]
        if len(where) != len(num_image_tokens):
            raise BadSampleError("placeholder_mismatch", f"the prompt holds {len(where)} image token(s) "
                                 f"{self.image_token!r} but {len(num_image_tokens)} image(s) were given", sample_id)
        labels = labels if labels is not None else [IGNORE_INDEX] * len(ids)
        out_ids, out_labels, starts, prev = [], [], [], 0
        for pos, n in zip(where, num_image_tokens):
            out_ids += ids[prev:pos]
            out_labels += labels[prev:pos]
            starts.append(len(out_ids))
            out_ids += [self.image_token_id] * n
            out_labels += [IGNORE_INDEX] * n
            prev = pos + 1
        return out_ids + ids[prev:], out_labels + labels[prev:], starts


def _split_images(images, counts: list[int]) -> list[list]:
    """`images` -> one list per sample, matching the samples' marker counts."""
    if images is None:
        images = []
    elif not isinstance(images, (list, tuple)):
        images = [images]
    nested = len(images) == len(counts) and images and all(isinstance(x, (list, tuple)) for x in images)
    if nested:
        per_sample = [list(x) for x in images]
    else:
        if sum(counts) != len(images):
            raise BadSampleError("placeholder_mismatch", f"{sum(counts)} {IMAGE_MARKER} marker(s) for "
                                 f"{len(images)} image(s)")
        it = iter(images)
        per_sample = [[next(it) for _ in range(c)] for c in counts]
    for i, (ims, c) in enumerate(zip(per_sample, counts)):
        if len(ims) != c:
            raise BadSampleError("placeholder_mismatch", f"{c} {IMAGE_MARKER} marker(s) for {len(ims)} image(s)",
                                 f"batch[{i}]")
    return per_sample
