import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer

from eve_vlm.errors import BadSampleError
from eve_vlm.processing import (
    IGNORE_INDEX, EveImageProcessor, EveProcessor, ensure_image_token, qwen_tokenizer, save_tokenizer_folder,
    smollm2_tokenizer,
)
from eve_vlm.processing.tokenizers import QWEN25_ADDED_TOKENS

SMALL = Image.new("RGB", (64, 64), "red")  # 64x64 at max_size 64 -> 2x2 units -> 7 tokens
WIDE = Image.new("RGB", (128, 32), "blue")  # already at the 64² budget: h=1, w=4 -> 6 tokens


@pytest.fixture(scope="module")
def smol():
    return EveProcessor(EveImageProcessor(max_size=64), smollm2_tokenizer(), template="native")


def llava(*turns):
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(turns)]


# ---- tokenizers ------------------------------------------------------------------------------

def test_qwen_tokenizer_is_the_real_one():
    tok = qwen_tokenizer()
    assert tok("Hello world")["input_ids"] == [9707, 1879]
    assert tok("1234")["input_ids"] == [16, 17, 18, 19]  # Qwen2 splits digits
    assert tok(" 你好")["input_ids"] == [220, 108386]
    assert len(tok) == 151665
    for i, (token, special) in enumerate(QWEN25_ADDED_TOKENS):
        assert tok.convert_tokens_to_ids(token) == 151643 + i
        assert tok.added_tokens_decoder[151643 + i].special == special
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token, tok.bos_token) == \
        ("<|im_end|>", 151645, "<|endoftext|>", None)
    assert ensure_image_token(tok) == 151655 and len(tok) == 151665  # <|image_pad|>, nothing added
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
                    "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_smollm2_tokenizer_and_image_token():
    tok = smollm2_tokenizer()
    assert len(tok) == 49152 and tok.eos_token == "<|im_end|>"
    assert ensure_image_token(tok) == 49152 and len(tok) == 49153  # <image> added as a special token
    assert tok("a <image> b")["input_ids"].count(49152) == 1  # never split
    assert len(smollm2_tokenizer()) == 49152  # a fresh copy each call: the cache is never mutated


@pytest.mark.parametrize("which", ["qwen2.5", "smollm2"])
def test_tokenizer_folders_load_with_auto_tokenizer(tmp_path, which):
    save_tokenizer_folder(which, tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    built = qwen_tokenizer() if which == "qwen2.5" else smollm2_tokenizer()
    text = "<|im_start|>user\nHello wörld 12345 你好 🎉<|im_end|>\n"
    assert loaded(text)["input_ids"] == built(text)["input_ids"]
    assert loaded.chat_template == built.chat_template and len(loaded) == len(built)
    assert loaded.eos_token == built.eos_token and loaded.pad_token == built.pad_token


# ---- expansion -------------------------------------------------------------------------------

def test_each_image_becomes_its_token_count_in_order(qwen):
    out = qwen.encode_conversation(llava("<image> vs <image>", "Different."), [SMALL, WIDE], template="native")
    assert out["num_image_tokens"] == [7, 6]
    ids = out["input_ids"].tolist()
    runs, i = [], 0
    while i < len(ids):  # contiguous runs of the image token
        if ids[i] == qwen.image_token_id:
            j = i
            while j < len(ids) and ids[j] == qwen.image_token_id:
                j += 1
            runs.append(j - i)
            i = j
        else:
            i += 1
    assert runs == [7, 6]
    assert [tuple(x.shape) for x in out["pixel_values"]] == [(3, 64, 64), (3, 32, 128)]
    assert (out["labels"][out["input_ids"] == qwen.image_token_id] == IGNORE_INDEX).all()


def test_generation_batch_is_left_padded(qwen):
    batch = qwen(messages=[llava("<image>\nWhat is it?"), llava("Hi")], images=[SMALL])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape and ids.shape[0] == 2
    assert mask[0].all() and not mask[1].all()  # the text-only prompt is shorter
    pad = int((mask[1] == 0).sum())
    assert (ids[1, :pad] == qwen.tokenizer.pad_token_id).all() and mask[1, pad:].all()
    assert int((ids[0] == qwen.image_token_id).sum()) == 7 and len(batch["pixel_values"]) == 1
    assert qwen.decode(ids[1, pad:]).endswith("USER: Hi ASSISTANT:")
    right = qwen(messages=[llava("<image>\nWhat is it?"), llava("Hi")], images=[SMALL], padding_side="right")
    assert right["attention_mask"][1, 0] == 1 and right["attention_mask"][1, -1] == 0


def test_text_prompts_and_per_sample_images(smol):
    batch = smol(text=["<image><image> two", "<image> one"], images=[[SMALL, WIDE], [WIDE]], return_tensors=None)
    counts = [row.count(smol.image_token_id) for row in batch["input_ids"]]
    assert counts == [13, 6] and len(batch["pixel_values"]) == 3
    gen = smol(messages=llava("Hello"))
    assert smol.decode(gen["input_ids"][0]).endswith("<|im_start|>assistant\n")
    assert smol.batch_decode(gen["input_ids"]) == [smol.tokenizer.decode(gen["input_ids"][0])]


@pytest.mark.parametrize("template, content, reason", [
    ("plain", "Describe it.", "no_image"),  # the plain template drops user text: nothing would be left
    ("plain", "", "no_image"),
    ("eve", "", "empty_turn"),
    ("eve", [], "empty_turn"),
    ("native", "", "empty_turn"),
    ("eve", None, "conversations_malformed"),  # OpenAI's user messages must have content
])
def test_a_generation_prompt_with_nothing_to_answer_is_an_error(smol, template, content, reason):
    with pytest.raises(BadSampleError) as err:
        smol(messages=[{"role": "user", "content": content}], template=template)
    assert err.value.reason == reason
    assert smol(messages=[{"role": "user", "content": [{"type": "image"}]}], images=[SMALL],
                template=template)["input_ids"].shape[1] >= 7  # an image alone is a question


def test_a_chat_template_that_refuses_a_conversation_is_a_bad_sample():
    tokenizer = smollm2_tokenizer()
    tokenizer.chat_template = "{{ raise_exception('Conversation roles must alternate user/assistant') }}"
    processor = EveProcessor(EveImageProcessor(max_size=64), tokenizer, template="native")
    with pytest.raises(BadSampleError, match="roles must alternate") as err:
        processor(messages=[{"role": "user", "content": "Hi"}])
    assert err.value.reason == "conversations_malformed"


def test_a_prompt_of_zero_tokens_never_reaches_a_model(smol):
    with pytest.raises(BadSampleError, match="empty_prompt"):
        smol(text=["<image>", ""], images=[SMALL])


def test_for_inference_resizes_with_the_inference_rule_and_leaves_the_original(smol):
    training = EveProcessor(EveImageProcessor(max_size=64, resize_mode="train"), smol.tokenizer, template="eve")
    served = training.for_inference()
    assert training.image_processor.resize_mode == "train" and served.image_processor.resize_mode == "inference"
    assert served.tokenizer is training.tokenizer and served.template == "eve"
    tiny = Image.new("RGB", (20, 12))
    assert served.image_processor(tiny)["image_sizes"] == [(64, 96)]  # upscaled to the 64² budget
    assert training.image_processor(tiny)["image_sizes"] == [(32, 32)]  # the training rule never upscales


# ---- placeholder errors ----------------------------------------------------------------------

@pytest.mark.parametrize("text,images", [("<image> and <image>", [SMALL]), ("no marker", [SMALL]), ("<image>", [])])
def test_marker_image_mismatch(qwen, text, images):
    with pytest.raises(BadSampleError) as err:
        qwen.encode_conversation(llava(text, "ok"), images, sample_id="m1")
    assert err.value.reason == "placeholder_mismatch" and err.value.sample_id == "m1"
    with pytest.raises(BadSampleError, match="placeholder_mismatch"):
        qwen(text=text, images=images)


def test_literal_placeholder_token_in_text_is_caught(qwen):
    with pytest.raises(BadSampleError, match="placeholder_mismatch"):
        qwen.encode_conversation(llava("<image> and a stray <|image_pad|>", "ok"), [SMALL])


# ---- truncation ------------------------------------------------------------------------------

def test_truncation_rules(qwen):
    conv = llava("<image>\nDescribe.", "word " * 40)
    full = qwen.encode_conversation(conv, [SMALL], template="plain")
    n = len(full["input_ids"])
    with pytest.raises(BadSampleError) as err:
        qwen.encode_conversation(conv, [SMALL], template="plain", max_length=n - 1, sample_id="long")
    assert err.value.reason == "too_long" and err.value.sample_id == "long"
    cut = qwen.encode_conversation(conv, [SMALL], template="plain", max_length=n - 10, truncation="text")
    assert len(cut["input_ids"]) == n - 10
    assert torch.equal(cut["input_ids"], full["input_ids"][: n - 10])
    assert torch.equal(cut["labels"], full["labels"][: n - 10])
    with pytest.raises(BadSampleError, match="too_long"):  # the image block alone is 7 tokens
        qwen.encode_conversation(conv, [SMALL], template="plain", max_length=6, truncation="text")
    with pytest.raises(BadSampleError, match="no_supervised_tokens"):  # only the image is left
        qwen.encode_conversation(conv, [SMALL], template="plain", max_length=7, truncation="text")
    assert len(qwen.encode_conversation(conv, [SMALL], template="plain", max_length=n)["input_ids"]) == n


def test_image_errors_name_the_sample(qwen, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(BadSampleError, match="broken.jpg") as err:
        qwen.encode_conversation(llava("<image>", "x"), [str(bad)], sample_id="img-9")
    assert err.value.reason == "image_unreadable" and err.value.sample_id == "img-9"


# ---- save / load -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["qwen", "smol"])
def test_auto_processor_round_trip(tmp_path, request, name):
    proc = request.getfixturevalue(name)
    proc.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is EveProcessor and type(loaded.image_processor) is EveImageProcessor
    assert (loaded.template, loaded.image_token_id, loaded.image_processor.max_size) == \
        (proc.template, proc.image_token_id, 64)
    conv = llava("<image>\nWhat is it?", "A red square.")
    a, b = proc.encode_conversation(conv, [SMALL]), loaded.encode_conversation(conv, [SMALL])
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert torch.equal(a["pixel_values"][0], b["pixel_values"][0])


# ---- independent turns -------------------------------------------------------------------------

@pytest.mark.parametrize("template", ["eve", "native"])
def test_independent_turns_are_the_single_question_prompts(qwen, smol, template):
    """Each question-answer pair of a record becomes the row that asking it alone would give,
    images included, with the images processed once; the rows differ only after the images."""
    processor = qwen if template == "eve" else smol
    image = Image.new("RGB", (64, 32), "red")
    record = llava("<image>\nWhat color?", "red", "What shape?", "circle", "Is it blue?", "no")
    out = processor.encode_conversation(record, [image], turns="independent")
    assert len(out["rows"]) == 3 and len(out["pixel_values"]) == 1 and "input_ids" not in out
    for (q, a), row in zip([("What color?", "red"), ("What shape?", "circle"), ("Is it blue?", "no")], out["rows"]):
        alone = processor.encode_conversation(llava(f"<image>\n{q}", a), [image])
        assert torch.equal(row["input_ids"], alone["input_ids"]) and torch.equal(row["labels"], alone["labels"])
    image_end = int((out["rows"][0]["input_ids"] == processor.image_token_id).nonzero().max()) + 1
    assert all(torch.equal(r["input_ids"][:image_end], out["rows"][0]["input_ids"][:image_end]) for r in out["rows"])
    joint = processor.encode_conversation(record, [image])
    assert "rows" not in joint and len(joint["input_ids"]) > max(len(r["input_ids"]) for r in out["rows"])


def test_independent_turns_keep_the_image_after_the_text_when_the_first_turn_does(smol):
    image = Image.new("RGB", (32, 32), "blue")
    out = smol.encode_conversation(llava("What color?\n<image>", "blue", "What shape?", "square"), [image],
                                   turns="independent")
    alone = smol.encode_conversation(llava("What shape?\n<image>", "square"), [image])
    assert torch.equal(out["rows"][1]["input_ids"], alone["input_ids"])


@pytest.mark.parametrize("record, reason", [
    (llava("<image>\nWhat color?", "red", "<image>\nAnd this one?", "blue"), "every image in the first user turn"),
    (llava("<image>\nWhat color?", "red", "What shape?"), "alternating user / assistant"),
])
def test_independent_turns_reject_what_they_cannot_split(qwen, record, reason):
    images = [Image.new("RGB", (32, 32))] * sum(t["value"].count("<image>") for t in record)
    with pytest.raises(BadSampleError, match=reason):
        qwen.encode_conversation(record, images, turns="independent")
