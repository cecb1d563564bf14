from collections import Counter

import pytest
from tiny import text_record, write_jsonl

from eve_vlm.data.mixture import Mixture, Source
from eve_vlm.data.sampler import LengthGroupedSampler, RandomSampler


@pytest.fixture
def files(tmp_path):
    (tmp_path / "data").mkdir()
    for name, n in (("a", 100), ("b", 30), ("c", 7)):
        write_jsonl(tmp_path / "data" / f"{name}.jsonl", [{**text_record(i), "id": f"{name}{i}"} for i in range(n)])
    return tmp_path


def mixture(files, sources: list[dict], **kw) -> Mixture:
    """A mixture of the `files` sources, as the recipe's `data.sources` builds one."""
    return Mixture([Source(**dict(s, path=str(files / s["path"]))) for s in sources], **kw)


def source_counts(mix):
    return Counter(mix[k]["id"].rstrip("0123456789") for k in range(len(mix)))


def test_ratios_split_num_samples_exactly(files):
    mix = mixture(files, [{"path": "data/a.jsonl", "ratio": 0.5, "template": "plain"},
                          {"path": "data/b.jsonl", "ratio": 0.3},
                          {"path": "data/c.jsonl", "ratio": 0.2}], num_samples=1001)
    assert len(mix) == 1001 and source_counts(mix) == {"a": 501, "b": 300, "c": 200}  # largest remainder: a
    assert Counter(mix[k]["id"] for k in range(len(mix)) if mix[k]["id"].startswith("c"))["c0"] in (28, 29)


def test_repeat_takes_passes_then_a_random_subset_that_changes_per_epoch(files):
    sources = [{"path": "data/a.jsonl", "repeat": 0.5}, {"path": "data/b.jsonl", "repeat": 2}, {"path": "data/c.jsonl"}]
    mix = mixture(files, sources)
    assert source_counts(mix) == {"a": 50, "b": 60, "c": 7}
    ids = Counter(mix[k]["id"] for k in range(len(mix)))
    assert all(ids[f"b{i}"] == 2 for i in range(30))
    subset0 = {mix[k]["id"] for k in range(50)}
    assert len(subset0) == 50 and subset0 == {mixture(files, sources)[k]["id"] for k in range(50)}
    mix.set_epoch(1)
    assert {mix[k]["id"] for k in range(50)} != subset0
    assert {mixture(files, sources, seed=1)[k]["id"] for k in range(50)} != subset0


def test_resume_from_a_sample_position_with_a_sampler(files):
    def run(state=None, stop=None):
        mix = mixture(files, [{"path": "data/a.jsonl", "ratio": 2}, {"path": "data/c.jsonl", "ratio": 1}])
        sampler = LengthGroupedSampler(mix.lengths(), batch_size=4, seed=mix.seed)
        if state:
            mix.load_state_dict(state["mixture"])
            sampler.load_state_dict(state["sampler"])
        out = []
        for k in sampler:
            out.append(mix[k]["id"])
            if len(out) == stop:
                return out, {"mixture": mix.state_dict(), "sampler": sampler.state_dict()}
        return out, None

    full, _ = run()
    head, state = run(stop=41)
    tail, _ = run(state)
    assert head + tail == full and len(full) == 107


def test_processor_gets_each_sources_template(files, qwen, monkeypatch):
    seen = []
    encode = qwen.encode_conversation

    def recording(conversation, images, template=None, **kw):
        seen.append(template)
        return encode(conversation, images, template=template, **kw)

    monkeypatch.setattr(qwen, "encode_conversation", recording)
    mix = mixture(files, [{"path": "data/a.jsonl", "template": "plain", "repeat": 0.1},
                          {"path": "data/c.jsonl", "template": "native"}], processor=qwen, max_length=512)
    samples = [mix[k] for k in RandomSampler(len(mix), seed=0)]
    assert Counter(seen) == {"plain": 10, "native": 7} and all("input_ids" in s for s in samples)
    native = next(s for s in samples if qwen.tokenizer.decode(s["input_ids"]).startswith("<|im_start|>"))
    assert qwen.tokenizer.decode(native["input_ids"][native["labels"] != -100]) == "answer answer answer<|im_end|>"


def test_config_errors_are_clear(files):
    with pytest.raises(ValueError, match="do not mix"):
        mixture(files, [{"path": "data/a.jsonl", "ratio": 1}, {"path": "data/b.jsonl", "repeat": 1}])
    with pytest.raises(ValueError, match="num_samples needs `ratio`"):
        mixture(files, [{"path": "data/a.jsonl"}], num_samples=10)
    with pytest.raises(FileNotFoundError):
        mixture(files, [{"path": "data/missing.jsonl"}])
