import json
import os
from collections import Counter

import pytest
import torch
from tiny import FIXTURES, text_record, write_jsonl

from eve_vlm.data.bad import REASONS, BadEvent, BadSampleCounter, SkipBad, TooManyBadSamplesError, bad_event
from eve_vlm.data.collate import Collator
from eve_vlm.data.llava import LlavaDataset, LlavaEncoder

RECORDS = os.path.join(FIXTURES, "records.jsonl")
IMAGES = os.path.join(FIXTURES, "images")
with open(os.path.join(FIXTURES, "expected.json")) as f:
    EXPECTED = json.load(f)


def test_fixture_is_big_enough():
    assert len(EXPECTED) >= 30 and sum(e != "ok" for e in EXPECTED) >= 20
    assert set(EXPECTED) - {"ok"} == set(REASONS)  # every reason is exercised


def test_each_bad_record_gives_its_reason_and_is_counted(qwen):
    ds = LlavaDataset(RECORDS, IMAGES, LlavaEncoder(qwen, max_length=1024))
    assert len(ds) == len(EXPECTED)
    counter = BadSampleCounter(max_bad_fraction=1.0)
    for i, expected in enumerate(EXPECTED):
        try:
            sample = ds[i]
        except Exception as exc:
            event = bad_event(exc, ds.where(i))
            assert event is not None, f"record {i}: {exc!r} is not a bad-sample error"
            assert event.reason == expected, f"record {i}: {event.message}"
            assert event.sample_id
            counter.add_bad(event)
        else:
            assert expected == "ok", f"record {i} should be {expected}, got sample {sample['id']}"
            assert (sample["labels"] != -100).any()
            counter.add_good()
    assert counter.counts == Counter(e for e in EXPECTED if e != "ok") and counter.good == EXPECTED.count("ok")
    table = counter.table()
    assert "image_unreadable" in table and "total bad" in table
    metrics = counter.metrics()
    assert metrics["bad/seen"] == len(EXPECTED) and metrics["bad/image_unreadable"] == 4
    json.dumps(counter.report())


def test_counter_stops_on_too_many_bad_with_a_clear_message():
    counter = BadSampleCounter(max_bad_fraction=0.1, min_seen=50)
    for i in range(30):  # 30 bad of 30 seen: below min_seen, keep going
        counter.add_bad(BadEvent("image_missing", f"s{i}", f"image_missing: no image file /data/{i}.jpg"))
    counter.add_good(19)
    with pytest.raises(TooManyBadSamplesError, match=r"30 of 50 samples \(60.0%\).*image_missing 30.*/data/0.jpg"):
        counter.add_good()
    ok = BadSampleCounter(max_bad_fraction=0.1, min_seen=50)
    ok.add_good(95)
    for i in range(10):
        ok.add_bad(BadEvent("too_long", str(i), "too_long"))
    assert ok.bad == 10 and len(ok.examples["too_long"]) == ok.max_examples
    restored = BadSampleCounter()
    restored.load_state_dict(json.loads(json.dumps(ok.state_dict())))
    assert restored.state_dict() == ok.state_dict() and restored.seen == 105


def test_skip_bad_map_wrapper_keeps_batches_full_and_counts_in_main_process(tmp_path, qwen):
    recs = [text_record(i) for i in range(40)]
    for i in (3, 4, 5, 17):
        recs[i] = {"id": f"bad{i}", "image": "gone.png", "conversations": [
            {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}]}
    path = write_jsonl(tmp_path / "d.jsonl", recs)
    ds = SkipBad(LlavaDataset(path, str(tmp_path), LlavaEncoder(qwen)), seed=1)
    assert ds[4]["id"] == SkipBad(LlavaDataset(path, str(tmp_path), LlavaEncoder(qwen)), seed=1)[4]["id"]
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2,
                                         collate_fn=Collator(qwen.tokenizer.pad_token_id))
    counter = BadSampleCounter(max_bad_fraction=0.2, min_seen=40)
    for batch in loader:
        assert batch["input_ids"].shape[0] == 8
        counter.update(batch)
    assert counter.counts == {"image_missing": 4} and counter.good == 40
    assert sorted(sid for sid, _ in counter.examples["image_missing"]) == ["bad17", "bad3", "bad4", "bad5"]


def test_unknown_exceptions_are_not_swallowed():
    assert bad_event(KeyError("bug")) is None
    with pytest.raises(KeyError):
        SkipBad(LlavaDataset(RECORDS, IMAGES, transform=lambda r: r["no such key"]))[0]
