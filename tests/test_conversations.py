"""One set of conversation rules (processing.chat.normalize_messages) for prompts, training records
(data.llava.parse_record) and evaluation records (eval.tasks)."""

import json
import re

import pytest

from eve_vlm.data.llava import parse_record
from eve_vlm.errors import BadSampleError
from eve_vlm.eval.tasks import Task
from eve_vlm.processing.chat import IMAGE_MARKER, image_part, normalize_messages, text_part


def turns(*pairs):
    return [{"from": role, "value": value} for role, value in pairs]


def test_llava_turns_and_openai_messages_normalize_alike():
    llava = turns(("system", "Be brief."), ("human", f"{IMAGE_MARKER}\nWhat?"), ("gpt", "A cat."), ("human", "Sure?"))
    openai = [{"role": "system", "content": "Be brief."},
              {"role": "user", "content": [image_part("x.png"), text_part("\nWhat?")]},
              {"role": "assistant", "content": [text_part("A cat.")]}, {"role": "user", "content": "Sure?"}]
    want = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "<image>\nWhat?"},
            {"role": "assistant", "content": "A cat."}, {"role": "user", "content": "Sure?"}]
    assert normalize_messages(llava) == normalize_messages(openai) == want
    parts = [{"type": kind, kind: "u"} for kind in ("image", "image_url")] + [{"type": "input_image", "image_url": "u"}]
    assert normalize_messages([{"role": "user", "content": parts}], num_images=3) == [
        {"role": "user", "content": IMAGE_MARKER * 3}]
    # the OpenAI API lets an assistant message leave its content out
    assert normalize_messages([{"role": "user", "content": "Hi"}, {"role": "assistant"}])[1]["content"] == ""


@pytest.mark.parametrize("conversation, kwargs, reason, message", [
    ("hello", {}, "conversations_malformed", "a list of turns"),
    ([], {}, "conversations_empty", "no turns"),
    (turns(("human", "hi"), ("robot", "beep")), {}, "conversations_malformed", "turn 1: unknown role 'robot'"),
    (turns(("gpt", "A caption.")), {}, "conversations_malformed", "turn 0 is 'gpt', expected 'user'"),
    (turns(("human", "a"), ("human", "b")), {"alternate": True}, "conversations_malformed",
     "turn 1 is 'human', expected 'assistant'"),
    (turns(("human", "a"), ("gpt", "b"), ("system", "c")), {}, "conversations_malformed", "system message may only"),
    ([{"from": "human"}, {"from": "gpt", "value": "x"}], {}, "conversations_malformed", "turn 0: the content is a "
     "NoneType"),
    ([{"role": "user", "content": 42}], {}, "conversations_malformed", "the content is a int"),
    ([{"role": "user", "content": [{"type": "audio"}]}], {}, "conversations_malformed", "unsupported content part"),
    (turns(("human", "Describe."), ("gpt", f"Here: {IMAGE_MARKER}")), {}, "placeholder_mismatch", "a reply holds"),
    (turns(("human", f"{IMAGE_MARKER} and {IMAGE_MARKER}?"), ("gpt", "Red.")), {"num_images": 1},
     "placeholder_mismatch", "2 <image> marker(s) for 1 image(s)"),
    (turns(("human", "Only a question")), {"needs_reply": True}, "no_supervised_tokens", "no non-empty assistant"),
    (turns(("human", "q"), ("gpt", "  ")), {"needs_reply": True}, "no_supervised_tokens", "no non-empty assistant"),
])
def test_each_rule_names_the_sample(conversation, kwargs, reason, message):
    with pytest.raises(BadSampleError, match=re.escape(message)) as err:
        normalize_messages(conversation, "s-1", **kwargs)
    assert err.value.reason == reason and err.value.sample_id == "s-1"


def test_a_prompt_may_hold_messages_of_one_role_in_a_row():
    """As OpenAI's API allows (e.g. an image, then a question, as two user messages); records alternate."""
    prompt = [{"role": "user", "content": [{"type": "image"}]}, {"role": "user", "content": "What colour?"}]
    assert [m["role"] for m in normalize_messages(prompt)] == ["user", "user"]
    with pytest.raises(BadSampleError, match="turn 1 is 'user', expected 'assistant'"):
        normalize_messages(prompt + [{"role": "assistant", "content": "red"}], needs_reply=True)


def test_training_and_evaluation_records_follow_the_same_rules(tmp_path):
    bad = turns(("human", "a"), ("human", "b"))
    with pytest.raises(BadSampleError, match="turn 1 is 'human', expected 'assistant'") as err:
        parse_record(json.dumps({"id": "r", "conversations": bad}).encode(), None, "f#0")
    assert err.value.reason == "conversations_malformed"
    good = turns(("human", f"{IMAGE_MARKER}\nWhat colour?"), ("gpt", "red"))
    assert parse_record(json.dumps({"id": "g", "image": "1.png", "conversations": good}).encode(), None,
                        "f#1")["messages"] == normalize_messages(good)
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps({"id": i, "image": "1.png", "conversations": c})
                                                 for i, c in (("bad", bad), ("good", good))) + "\n")
    task = Task.load("jsonl-vqa", data=str(tmp_path / "qa.jsonl"))
    bad_row, good_row = task.records(str(tmp_path))
    assert "turn 1 is 'human', expected 'assistant'" in bad_row["error"]
    assert (good_row["question"], good_row["answers"]) == ("What colour?", ["red"])
