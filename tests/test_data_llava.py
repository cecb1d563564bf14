import json
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import FIXTURES, text_record, write_jsonl

from eve_vlm.data import llava
from eve_vlm.data.llava import LlavaDataset, LlavaEncoder, parse_record, scan
from eve_vlm.errors import BadSampleError

IMAGES = os.path.join(FIXTURES, "images")


def test_jsonl_offsets_point_at_records(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"a": 1}\n\n  {"b": "\xc3\xa9"}  \r\n{"c": 3}')  # blank line, CRLF, no final newline
    data = path.read_bytes()
    got = list(scan(str(path)))
    assert [json.loads(raw) for _, raw in got] == [{"a": 1}, {"b": "é"}, {"c": 3}]
    assert all(data[off:off + len(raw)] == raw for off, raw in got)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='ab{}[],"\\ é\n\t€'),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet='k{"]\\', max_size=3), inner, max_size=3),
    max_leaves=8)


@settings(max_examples=150, deadline=None)
@given(st.lists(json_values, max_size=6), st.sampled_from([1, 2, 5, 1 << 20]), st.booleans())
def test_json_array_scan_matches_json_load(tmp_path_factory, elements, chunk, pretty):
    path = tmp_path_factory.mktemp("arr") / "a.json"
    path.write_text(json.dumps(elements, indent=2 if pretty else None, ensure_ascii=False), encoding="utf-8")
    data = path.read_bytes()
    old, llava.CHUNK = llava.CHUNK, chunk  # tiny reads put every token across a buffer boundary
    try:
        got = list(scan(str(path)))
    finally:
        llava.CHUNK = old
    assert [json.loads(raw) for _, raw in got] == elements
    assert all(data[off:off + len(raw)] == raw for off, raw in got)


def test_json_array_bad_element_costs_one_record_and_truncation_is_reported(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[{"id": 1}, {"id": tru}, {"id": 3}]')
    raws = [raw for _, raw in scan(str(path))]
    assert len(raws) == 3 and json.loads(raws[2]) == {"id": 3}
    with pytest.raises(json.JSONDecodeError):
        json.loads(raws[1])
    path.write_text('[{"id": 1}, {"id": "cut')
    with pytest.raises(ValueError, match="not closed"):
        list(scan(str(path)))


def test_parse_record_resolves_images_and_defaults_id():
    turns = [{"from": "human", "value": "<image><image>hi"}, {"from": "gpt", "value": "yo"}]
    rec = parse_record(json.dumps({"image": ["a.png", "b/c.jpg"], "conversations": turns}).encode(), "/root", "f#4")
    assert rec["id"] == "f#4" and rec["images"] == ["/root/a.png", "/root/b/c.jpg"]
    one = {"id": 7, "image": "z.png", "conversations": [{"from": "human", "value": "<image>"},
                                                          {"from": "gpt", "value": "c"}]}
    rec = parse_record(json.dumps(one).encode(), None, "x")
    assert rec["id"] == "7" and rec["images"] == ["z.png"]
    chat = {"id": None, "conversations": [{"from": "system", "value": "Be brief."}, {"from": "user", "value": "hi"},
                                          {"from": "assistant", "value": "yo"}]}
    assert parse_record(json.dumps(chat).encode(), None, "f#2")["id"] == "f#2"  # system turn, role aliases
    with pytest.raises(BadSampleError) as e:
        parse_record(b'{"conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "c"}]}', None, "f#1")
    assert e.value.reason == "placeholder_mismatch" and e.value.sample_id == "f#1"


def test_map_dataset_random_access_and_encoding(tmp_path, qwen):
    recs = [text_record(i) for i in range(400)]  # enough reads for a shared file offset to show
    recs[5] = {"id": "img", "image": ["red.png", "green.jpg"], "conversations": [
        {"from": "human", "value": "<image>\n<image>\nColours?"}, {"from": "gpt", "value": "Red, green."}]}
    path = write_jsonl(tmp_path / "d.jsonl", recs)
    ds = LlavaDataset(path, IMAGES)
    assert len(ds) == 400 and ds[13]["id"] == "r13" and ds[5]["images"][1] == os.path.join(IMAGES, "green.jpg")
    lengths = ds.lengths(image_tokens=100)
    assert lengths[5] == 2 * 100 + 5 and lengths[0] == -5  # words (markers included) + image cost
    enc = LlavaDataset(path, IMAGES, LlavaEncoder(qwen))
    sample = enc[5]
    # 48x32 and 64x48 images, both upscaled to the inference budget: 2x3 units of 32 px, 1 + h(w+1) tokens
    assert [p.shape for p in sample["pixel_values"]] == [(3, 64, 96), (3, 64, 96)]
    assert sample["num_image_tokens"] == [1 + 2 * (3 + 1)] * 2
    assert (sample["input_ids"] == qwen.image_token_id).sum() == sum(sample["num_image_tokens"])
    answer = qwen.tokenizer.decode(sample["input_ids"][sample["labels"] != -100])
    assert answer == " Red, green." + qwen.tokenizer.eos_token  # the `eve` template: the space is the reply's
    # the parent has the file open (enc[5] above); forked workers must still read their own records
    loader = torch.utils.data.DataLoader(enc, batch_size=None, num_workers=2)
    assert [s["id"] for s in loader] == [r["id"] for r in recs]


