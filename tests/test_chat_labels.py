"""Labels are exact: the supervised tokens decode to exactly the assistant replies (+ end token),
for every template, with the real Qwen2.5 and SmolLM2 tokenizers."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from eve_vlm.errors import BadSampleError
from eve_vlm.processing import EVE_SYSTEM, IGNORE_INDEX, EveImageProcessor, EveProcessor, render
from eve_vlm.processing.chat import normalize_messages
from eve_vlm.processing.tokenizers import qwen_tokenizer, smollm2_tokenizer

IMG = Image.new("RGB", (40, 30), (200, 10, 10))


@pytest.fixture(scope="module", params=["qwen2.5", "smollm2"])
def proc(request):
    tok = qwen_tokenizer() if request.param == "qwen2.5" else smollm2_tokenizer()
    return EveProcessor(EveImageProcessor(max_size=64), tok)


def supervised_text(proc, out) -> str:
    ids, labels = out["input_ids"], out["labels"]
    keep = labels != IGNORE_INDEX
    assert (labels[keep] == ids[keep]).all()  # labels are the ids themselves, unshifted
    assert (labels[ids == proc.image_token_id] == IGNORE_INDEX).all()
    return proc.tokenizer.decode(ids[keep], clean_up_tokenization_spaces=False)


def expected(proc, template, replies) -> str:
    eos = proc.tokenizer.eos_token
    if template == "plain":
        text = replies[0].strip() + "\n"
    elif template == "eve":
        text = "".join(" " + r + eos for r in replies)
    else:
        text = "".join(r + eos for r in replies)
    normalizer = proc.tokenizer.backend_tokenizer.normalizer  # Qwen's NFC: "e\u0301" decodes as "é"
    return normalizer.normalize_str(text) if normalizer else text


def llava(*turns):
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(turns)]


CASES = {
    "text_only": (llava("What is 2+2?", "4"), 0),
    "one_image": (llava("<image>\nWhat colour is this?", "Red, mostly."), 1),
    "image_after_text": (llava("Describe this: <image>", "A red rectangle.\n\nNothing else."), 1),
    "multi_turn": (llava("<image>\nWhat is it?", "A rectangle.", "Which colour?", "Red (200, 10, 10).",
                         "Sure?", "Yes — 100 %."), 1),
    "multi_image": (llava("Compare <image> with <image>.", "They are the same image."), 2),
    "openai_parts": ([{"role": "system", "content": "You are terse."},
                      {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
                      {"role": "user", "content": [{"type": "text", "text": "And this "}, {"type": "image_url",
                                                   "image_url": {"url": "data:..."}}]},
                      {"role": "assistant", "content": "Also red, 你好."}], 2),
}


def replies_of(conversation):
    return [m["content"] for m in normalize_messages(conversation) if m["role"] == "assistant"]


@pytest.mark.parametrize("template", ["eve", "native"])
@pytest.mark.parametrize("case", list(CASES))
def test_chat_templates_supervise_exactly_the_replies(proc, template, case):
    conversation, n_images = CASES[case]
    out = proc.encode_conversation(conversation, [IMG] * n_images, template=template, sample_id=case)
    assert supervised_text(proc, out) == expected(proc, template, replies_of(conversation))
    assert int((out["input_ids"] == proc.image_token_id).sum()) == sum(out["num_image_tokens"])
    assert len(out["pixel_values"]) == n_images


@pytest.mark.parametrize("case", ["text_only", "one_image", "image_after_text", "multi_image"])
def test_plain_template_supervises_the_caption_and_newline(proc, case):
    conversation, n_images = CASES[case]
    out = proc.encode_conversation(conversation, [IMG] * n_images, template="plain")
    assert supervised_text(proc, out) == expected(proc, "plain", replies_of(conversation))
    # The user turn is gone: the sequence is the image blocks then the caption.
    n_visual = sum(out["num_image_tokens"])
    assert (out["input_ids"][:n_visual] == proc.image_token_id).all()
    assert (out["labels"][n_visual:] != IGNORE_INDEX).all()


def test_eve_template_renders_the_official_string(proc):
    messages = normalize_messages(llava("What is in the image?\n<image>", "A cat.", "Sure?"))
    text, spans = render(messages, "eve", proc.tokenizer, "<image>", add_generation_prompt=True)
    assert text == (EVE_SYSTEM + " USER: <image>\nWhat is in the image? ASSISTANT: A cat.<|im_end|>"
                    "USER: Sure? ASSISTANT:")
    assert [text[a:b] for a, b in spans] == [" A cat.<|im_end|>"]


def test_native_template_is_the_tokenizers_own(proc):
    messages = normalize_messages(llava("Hi", "Hello!"))
    text, spans = render(messages, "native", proc.tokenizer, proc.image_token)
    assert text == proc.tokenizer.apply_chat_template(messages, tokenize=False)
    assert text.startswith("<|im_start|>system\n") and [text[a:b] for a, b in spans] == ["Hello!<|im_end|>"]


@settings(max_examples=60, deadline=None)
@given(reply=st.lists(st.sampled_from(list("ab Z09.,!?()\n\t-'\"é你🎉") + ["  ", "\n\n", "<|im_end|>", "e\u0301"]),
                      min_size=1, max_size=20).map("".join),
       template=st.sampled_from(["plain", "eve", "native"]))
def test_any_reply_is_exact_or_rejected(proc, reply, template):
    """Whatever the reply, the labels are either exactly right or the sample is rejected by name."""
    conversation = llava("<image>\nQ?", reply)
    try:
        out = proc.encode_conversation(conversation, [IMG], template=template, sample_id="fuzz")
    except BadSampleError as exc:
        assert exc.reason in ("label_mismatch", "no_supervised_tokens") and exc.sample_id == "fuzz"
        return
    assert supervised_text(proc, out) == expected(proc, template, [reply])


def test_reply_boundary_inside_a_token_is_rejected(qwen):
    # ChatML puts "\n" before the reply; Qwen merges it with the reply's own "\n" into one token.
    with pytest.raises(BadSampleError, match="sample s7") as err:
        qwen.encode_conversation(llava("Hi", "\nHello"), [], template="native", sample_id="s7")
    assert err.value.reason == "label_mismatch"


@pytest.mark.parametrize("conversation,reason", [
    ([{"from": "robot", "value": "hi"}], "conversations_malformed"),
    ([{"from": "gpt", "value": "hi"}, {"from": "human", "value": "yo"}], "conversations_malformed"),
    ([], "conversations_empty"),
    (llava("Only a question"), "no_supervised_tokens"),
])
def test_malformed_conversations_name_the_sample(proc, conversation, reason):
    with pytest.raises(BadSampleError) as err:
        proc.encode_conversation(conversation, [], template="eve", sample_id="id-1")
    assert err.value.reason == reason and err.value.sample_id == "id-1"


def test_plain_needs_one_question_and_one_caption(proc):
    with pytest.raises(BadSampleError, match="plain template") as err:
        proc.encode_conversation(CASES["multi_turn"][0], [IMG], template="plain")
    assert err.value.reason == "conversations_malformed"
