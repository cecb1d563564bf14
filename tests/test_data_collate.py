import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from eve_vlm.data.collate import Collator
from eve_vlm.data.packing import PackingCollator, first_fit, pack

PAD = 0


def sample(n, images=(), sid=None, prompt=3):
    """n tokens (ids 10..), images: list of (h, w, placeholder count) put after the prompt."""
    ids, labels, pixels, counts = [], [], [], []
    g = torch.Generator().manual_seed(n * 31 + len(images))
    text = torch.randint(10, 140, (n,), generator=g).tolist()
    ids += text[:prompt]
    labels += [-100] * prompt
    for h, w, count in images:
        ids += [150] * count
        labels += [-100] * count
        pixels.append(torch.randn(3, h, w, generator=g))
        counts.append(count)
    ids += text[prompt:]
    labels += text[prompt:]
    return {"id": sid, "input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
            "pixel_values": pixels, "num_image_tokens": counts, "skipped": []}


def test_collator_right_pads_and_keeps_image_order():
    a, b = sample(5, [(32, 32, 3)], "a"), sample(9, [(64, 32, 5), (32, 64, 4)], "b")
    batch = Collator(PAD, pad_to_multiple_of=8)([a, b])
    L = len(b["input_ids"])
    assert batch["input_ids"].shape == (2, 24) and L == 18
    assert batch["attention_mask"][0].tolist() == [1] * 8 + [0] * 16
    assert (batch["input_ids"][0, 8:] == PAD).all() and (batch["labels"][0, 8:] == -100).all()
    assert torch.equal(batch["labels"][1, :L], b["labels"])
    assert [p.shape for p in batch["pixel_values"]] == [(3, 32, 32), (3, 64, 32), (3, 32, 64)]
    assert batch["meta"]["ids"] == ["a", "b"] and batch["meta"]["num_image_tokens"] == [3, 5, 4]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 64), max_size=30), st.integers(64, 200))
def test_pack_puts_every_sample_in_exactly_one_row_that_fits(lengths, max_length):
    ff, rows = first_fit(lengths, max_length), pack(lengths, max_length)
    totals = lambda rows: sorted(sum(lengths[i] for i in row) for row in rows)  # noqa: E731
    for r in (ff, rows):
        assert sorted(i for row in r for i in row) == list(range(len(lengths)))
        assert all(t <= max_length for t in totals(r))
    assert len(totals(ff)) < 2 or totals(ff)[0] + totals(ff)[1] > max_length  # no two rows could merge
    assert len(rows) == len(ff) and max(totals(rows), default=0) <= max(totals(ff), default=0)


def test_packing_collator_layout():
    samples = [sample(n, [(32, 32, 3)] if n % 2 else [], f"s{n}") for n in (7, 12, 5, 20, 9)]
    samples.append(sample(40, [], "huge"))
    batch = PackingCollator(max_length=32, pad_token_id=PAD)(samples)
    assert batch["attention_mask"] is None
    assert [e.reason for e in batch["meta"]["skipped"]] == ["too_long"]
    seq_lens = batch["meta"]["seq_lens"]
    assert sum(map(len, seq_lens)) == 5 and all(sum(r) <= 32 for r in seq_lens)
    by_id = {s["id"]: s for s in samples}
    ids, pos, labels = batch["input_ids"], batch["position_ids"], batch["labels"]
    k = 0
    for r, row in enumerate(seq_lens):
        start = 0
        for n in row:
            s = by_id[batch["meta"]["ids"][k]]
            assert torch.equal(ids[r, start:start + n], s["input_ids"])
            assert pos[r, start:start + n].tolist() == list(range(n))
            assert labels[r, start] == -100 and torch.equal(labels[r, start + 1:start + n], s["labels"][1:])
            start, k = start + n, k + 1
        assert pos[r, start:].tolist() == list(range(ids.shape[1] - start))
    # images follow the flattened row order, which is how the model fills placeholders
    expected = [p for sid in batch["meta"]["ids"] for p in by_id[sid]["pixel_values"]]
    assert len(batch["pixel_values"]) == len(expected) == 3
    assert all(p is q for p, q in zip(batch["pixel_values"], expected))


def per_sample_losses(logits, labels, boundaries):
    """Summed next-token CE of each (row, start, end) span, predicting only inside the span."""
    out = []
    for r, start, end in boundaries:
        lg, lb = logits[r, start:end - 1], labels[r, start + 1:end]
        out.append(F.cross_entropy(lg.float(), lb, ignore_index=-100, reduction="sum"))
    return torch.stack(out)


def check_packed_equals_unpacked(model, samples, max_length):
    padded = Collator(PAD)(samples)
    packed = PackingCollator(max_length, PAD)(samples)
    assert packed["input_ids"].shape[0] < len(samples)  # several samples share a row
    kw = {"pixel_values": padded["pixel_values"]} if padded["pixel_values"] else {}
    with torch.no_grad():
        ref = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"],
                    labels=padded["labels"], use_cache=False, **kw)
        kw = {"pixel_values": packed["pixel_values"]} if packed["pixel_values"] else {}
        got = model(input_ids=packed["input_ids"], attention_mask=None, position_ids=packed["position_ids"],
                    labels=packed["labels"], use_cache=False, **kw)
    order = {sid: i for i, sid in enumerate(padded["meta"]["ids"])}
    ref_spans = [(i, 0, len(s["input_ids"])) for i, s in enumerate(samples)]
    got_spans, k = [None] * len(samples), 0
    for r, row in enumerate(packed["meta"]["seq_lens"]):
        start = 0
        for n in row:
            got_spans[order[packed["meta"]["ids"][k]]] = (r, start, start + n)
            start, k = start + n, k + 1
    ref_losses = per_sample_losses(ref.logits, padded["labels"], ref_spans)
    got_losses = per_sample_losses(got.logits, packed["labels"], got_spans)
    torch.testing.assert_close(got_losses, ref_losses, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.loss, ref.loss, rtol=1e-5, atol=1e-5)  # same supervised tokens


def test_packed_loss_equals_unpacked_qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=160, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")
    model = Qwen2ForCausalLM(cfg).eval()
    samples = [sample(n, sid=f"s{i}") for i, n in enumerate((13, 30, 7, 22, 9, 16, 4))]
    check_packed_equals_unpacked(model, samples, max_length=48)


def test_packed_loss_equals_unpacked_eve_with_images():
    tiny = pytest.importorskip("tiny")
    model = tiny.tiny_eve()
    assert tiny.IMAGE_ID == 150  # the placeholder id `sample` writes
    n = lambda h, w: model.model.patch_embed.num_tokens(h, w)  # noqa: E731
    samples = [sample(12, [(32, 32, n(32, 32))], "a"), sample(20, [], "b"),
               sample(9, [(64, 32, n(64, 32)), (32, 64, n(32, 64))], "c"), sample(15, [(32, 96, n(32, 96))], "d"),
               sample(6, [], "e")]
    check_packed_equals_unpacked(model, samples, max_length=64)
