"""Chat templates and exact label masks.

A conversation (LLaVA turns or OpenAI/HF messages) is rendered to ONE string while the character
spans of the assistant replies (plus their end token) are recorded; the string is tokenized once
with offsets and a token is supervised iff its character span lies inside a reply span. Nothing
is ever re-tokenized in pieces, so labels cannot drift; a reply boundary that falls inside a token
is an error, not a silent shift.

Templates:
- `plain` (stages 1-2.1): the images, then the caption; the user turn is discarded.
- `eve` (official EVEv2, Vicuna-style): "SYSTEM USER: q ASSISTANT: a<|im_end|>USER: ...".
- `native`: the tokenizer's own chat template (ChatML for Qwen2.5, SmolLM2's own).
"""

from typing import Literal, get_args

import jinja2
import numpy as np

from eve_vlm.errors import BadSampleError

IMAGE_MARKER = "<image>"  # where an image goes in text; also the placeholder token a vocabulary without one gets
# The kinds of image part a message's content may hold: HF's {"type": "image", "image": x} (x beside
# the messages when absent), OpenAI Chat's {"type": "image_url", "image_url": {"url": u}} and the
# Responses API's {"type": "input_image", "image_url": u}.
IMAGE_PART, IMAGE_URL_PART, INPUT_IMAGE_PART = "image", "image_url", "input_image"
IMAGE_PARTS = (IMAGE_PART, IMAGE_URL_PART, INPUT_IMAGE_PART)
Template = Literal["plain", "eve", "native"]
TEMPLATES: tuple[str, ...] = get_args(Template)
# How a training record with several questions is learned: as one conversation, or each
# question on its own with the record's images (`split_turns`).
Turns = Literal["joint", "independent"]
TURNS: tuple[str, ...] = get_args(Turns)
EVE_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")
_ROLES = {"human": "user", "gpt": "assistant", **{role: role for role in ROLES}}  # + LLaVA's names


def normalize_messages(conversation, sample_id: str | None = None, num_images: int | None = None,
                       needs_reply: bool = False, alternate: bool | None = None) -> list[dict]:
    """The conversation rules, for every caller (training records, evaluation records, prompts).

    LLaVA turns ({"from", "value"}) or OpenAI/HF messages ({"role", "content": str | parts})
    -> [{"role": "system"|"user"|"assistant", "content": str}]; image parts become `<image>` markers.
    An optional system message comes first, then the user's turn; in a record (`alternate`: by
    default when `needs_reply`) user and assistant alternate from there, as label masks and
    question / answer pairs need, while a prompt may hold several messages of one role in a row,
    as OpenAI's API allows. A caption or reply never holds an image. `num_images`: how many images come with the
    conversation, one per marker. `needs_reply`: a training sample needs a non-empty reply.
    Breaking a rule raises BadSampleError naming the sample and the turn."""
    if not isinstance(conversation, (list, tuple)):
        raise BadSampleError("conversations_malformed", "a conversation is a list of turns", sample_id)
    if not conversation:
        raise BadSampleError("conversations_empty", "the conversation has no turns", sample_id)
    messages = [_message(turn, i, sample_id) for i, turn in enumerate(conversation)]
    first = 1 if messages[0]["role"] == "system" else 0
    for i, m in enumerate(messages[first:], first):
        expected = ("user", "assistant")[(i - first) % 2]
        if m["role"] != expected and (i == first or (needs_reply if alternate is None else alternate)):
            given = conversation[i].get("role", conversation[i].get("from"))
            raise BadSampleError("conversations_malformed", f"turn {i} is {given!r}, expected {expected!r} (after an "
                                 "optional system message, user and assistant turns alternate)", sample_id)
    if any(IMAGE_MARKER in m["content"] for m in messages if m["role"] == "assistant"):
        raise BadSampleError("placeholder_mismatch", f"a reply holds an {IMAGE_MARKER} marker", sample_id)
    if num_images is not None and count_images(messages) != num_images:
        raise BadSampleError("placeholder_mismatch", f"{count_images(messages)} {IMAGE_MARKER} marker(s) for "
                             f"{num_images} image(s)", sample_id)
    if needs_reply and not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise BadSampleError("no_supervised_tokens", "no non-empty assistant turn", sample_id)
    return messages


def _message(turn, i: int, sample_id) -> dict:
    role = turn.get("role", turn.get("from")) if isinstance(turn, dict) else None
    content = turn.get("content", turn.get("value")) if isinstance(turn, dict) else None
    if role not in _ROLES:
        raise BadSampleError("conversations_malformed", f"turn {i}: unknown role {role!r}", sample_id)
    if isinstance(content, (list, tuple)):
        content = "".join(_part_text(p, i, sample_id) for p in content)
    elif content is None and turn.get("role") == "assistant":  # the OpenAI API lets a reply omit it
        content = ""
    elif not isinstance(content, str):
        raise BadSampleError("conversations_malformed", f"turn {i}: the content is a {type(content).__name__}, "
                             "not a string or a list of parts", sample_id)
    if _ROLES[role] == "system" and i:
        raise BadSampleError("conversations_malformed", "a system message may only come first", sample_id)
    return {"role": _ROLES[role], "content": content}


def _part_text(part, turn: int, sample_id) -> str:
    if isinstance(part, str):
        return part
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        return part.get("text", "")
    if kind in IMAGE_PARTS:
        return IMAGE_MARKER
    raise BadSampleError("conversations_malformed", f"turn {turn}: unsupported content part {kind!r}", sample_id)


def image_part(image=None) -> dict:
    """An HF-style image part; without `image`, the slot of an image passed beside the messages."""
    return {"type": IMAGE_PART} if image is None else {"type": IMAGE_PART, IMAGE_PART: image}


def text_part(text: str) -> dict:
    return {"type": "text", "text": text}


def split_turns(messages: list[dict], sample_id: str | None = None) -> list[list[dict]]:
    """A conversation of several questions about the same images -> one conversation per
    question-answer pair, each with the system message and the first user turn's images, placed
    before or after the question as the first turn places them. No question sees another one or its
    answer, so nothing can be read off an earlier turn: each pair is the single-question prompt a
    user (or an evaluation) sends."""
    system = [m for m in messages if m["role"] == "system"]
    chat = [m for m in messages if m["role"] != "system"]
    roles = [m["role"] for m in chat]
    if len(chat) % 2 or roles != ["user", "assistant"] * (len(chat) // 2):
        raise BadSampleError("conversations_malformed", "independent turns need alternating user / assistant "
                             f"turns, got {roles}", sample_id)
    if any(IMAGE_MARKER in m["content"] for m in chat[1:]):
        raise BadSampleError("conversations_malformed", "independent turns need every image in the first user "
                             "turn: a later image would be missing from the other questions", sample_id)
    first = chat[0]["content"]
    markers = IMAGE_MARKER * first.count(IMAGE_MARKER)
    image_first = first.lstrip().startswith(IMAGE_MARKER)

    def ask(question: str) -> str:
        if not markers:
            return question
        return markers + "\n" + question if image_first else question + "\n" + markers

    pairs = [chat[:2]] + [[dict(q, content=ask(q["content"])), a] for q, a in zip(chat[2::2], chat[3::2])]
    return [system + pair for pair in pairs]


def count_images(messages: list[dict]) -> int:
    return sum(m["content"].count(IMAGE_MARKER) for m in messages)


def render(messages: list[dict], template: str, tokenizer, image_token: str = IMAGE_MARKER,
           add_generation_prompt: bool = False, sample_id: str | None = None) -> tuple[str, list[tuple[int, int]]]:
    """Normalized messages -> (text, assistant reply spans [start, end) in characters).

    `<image>` markers become `image_token` (the tokenizer's placeholder token, one per image).
    """
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; choose from {TEMPLATES}")
    if template == "plain":
        return _render_plain(messages, image_token, add_generation_prompt, sample_id)
    if add_generation_prompt:
        _check_user_turns(messages, tokenizer, sample_id)
    if template == "eve":
        messages = [dict(m, content=_image_first(m["content"])) for m in messages]
    messages = [dict(m, content=m["content"].replace(IMAGE_MARKER, image_token)) for m in messages]
    if template == "eve":
        return _render_eve(messages, tokenizer.eos_token, add_generation_prompt)
    return _render_native(messages, tokenizer, add_generation_prompt, sample_id)


def _check_user_turns(messages, tokenizer, sample_id):
    # A prompt to answer: every user turn holds an image or text that gives at least one token.
    for i, m in enumerate(messages):
        if m["role"] != "user" or IMAGE_MARKER in m["content"]:
            continue
        if not tokenizer(m["content"], add_special_tokens=False)["input_ids"]:
            raise BadSampleError("empty_turn", f"turn {i}: the user's message is empty (no image, and no text that "
                                 "gives a token): send text or an image", sample_id)


def _image_first(text: str) -> str:
    # Official `preprocess_multimodal`: a message's image moves to its start, "<image>\n" + rest.
    # Several images in one message stay where they are (their order relative to the text matters).
    if text.count(IMAGE_MARKER) != 1:
        return text
    return IMAGE_MARKER + "\n" + text.replace(IMAGE_MARKER, "").strip()


def _render_plain(messages, image_token, add_generation_prompt, sample_id):
    chat = [m for m in messages if m["role"] != "system"]
    prefix = image_token * count_images(chat[:1])
    if add_generation_prompt and len(chat) == 1:
        if not prefix:
            raise BadSampleError("no_image", "this model's template (plain) ignores user text and writes a caption "
                                 "of the images: send an image", sample_id)
        return prefix, []
    if [m["role"] for m in chat] != ["user", "assistant"]:
        raise BadSampleError("conversations_malformed", "the plain template takes one user turn and one caption",
                             sample_id)
    caption = chat[1]["content"].strip() + "\n"
    return prefix + caption, [(len(prefix), len(prefix) + len(caption))]


def _render_eve(messages, end, add_generation_prompt):
    system = messages[0]["content"] if messages[0]["role"] == "system" else EVE_SYSTEM
    text, spans = system + " ", []
    for m in messages:
        if m["role"] == "user":
            text += "USER: " + m["content"] + " "
        elif m["role"] == "assistant":
            text += "ASSISTANT:"
            # The separator space is part of the reply's first token (" The"), as in the official masks.
            reply = " " + m["content"] + end
            spans.append((len(text), len(text) + len(reply)))
            text += reply
    if add_generation_prompt:
        text += "ASSISTANT:"
    return text, spans


def _render_native(messages, tokenizer, add_generation_prompt, sample_id):
    def chat(msgs, gen):
        try:
            return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
        except jinja2.TemplateError as exc:  # a template's own rule, e.g. "roles must alternate"
            raise BadSampleError("conversations_malformed", f"the tokenizer's chat template refuses the "
                                 f"conversation: {exc}", sample_id) from exc

    text, spans = chat(messages, add_generation_prompt), []
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        # The reply starts where the generation prompt of the conversation so far ends.
        prompt = chat(messages[:k], True)
        start, reply = len(prompt), m["content"] + tokenizer.eos_token
        if not text.startswith(prompt) or text[start:start + len(reply)] != reply:
            raise BadSampleError(
                "label_mismatch",
                f"the chat template does not render assistant turn {k} as its generation prompt followed by "
                f"the reply and {tokenizer.eos_token!r}", sample_id)
        spans.append((start, start + len(reply)))
    return text, spans


def tokenize_with_labels(tokenizer, text: str, spans: list[tuple[int, int]],
                         sample_id: str | None = None) -> tuple[list[int], list[int]]:
    """Tokenize `text` once; labels = the ids of the tokens inside `spans`, IGNORE_INDEX elsewhere.

    Raises BadSampleError("label_mismatch") when the supervised tokens of a reply do not decode to
    exactly that reply (a token straddles its boundary)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int64)
    normalizer = getattr(getattr(tokenizer, "backend_tokenizer", None), "normalizer", None)
    for a, b in spans:
        inside = np.flatnonzero((offsets[:, 0] >= a) & (offsets[:, 1] <= b))
        got = tokenizer.decode([ids[i] for i in inside], clean_up_tokenization_spaces=False)
        want = normalizer.normalize_str(text[a:b]) if normalizer else text[a:b]
        if got != want:
            raise BadSampleError(
                "label_mismatch", f"the supervised tokens decode to {got!r}, not to the reply {want!r}: a token "
                "crosses the reply boundary", sample_id)
        labels[inside] = np.asarray(ids)[inside]
    return ids, labels.tolist()
