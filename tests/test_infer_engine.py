"""The inference engine: batched rows with their own options equal one-by-one runs; streaming,
stop strings, seeds, loading errors."""

import pytest

from eve_vlm.errors import EveError
from eve_vlm.infer import GenerationOptions, encode, generate, load
from eve_vlm.infer.engine import _Row
from tiny import conversations


def test_batch_with_per_row_options_equals_one_by_one(tiny):
    model, processor = tiny
    prompts = [encode(processor, c) for c in conversations()]
    options = [GenerationOptions(max_new_tokens=12), GenerationOptions(max_new_tokens=5),
               GenerationOptions(max_new_tokens=9)]
    alone = [generate(model, processor, [p], o)[0] for p, o in zip(prompts, options)]
    streamed = ["", "", ""]

    def on_delta(i, text):
        streamed[i] += text

    batched = generate(model, processor, prompts, options, on_delta=on_delta)
    assert batched == alone
    assert [c.text for c in batched] == streamed  # the streamed pieces add up to the answer
    assert [c.completion_tokens for c in batched] == [12, 5, 9] and {c.finish_reason for c in batched} == {"length"}
    assert len({c.text for c in batched}) == 3  # the random model answers differently: the test can fail
    assert batched[0].prompt_tokens == len(prompts[0].input_ids)


def test_stop_strings_cut_the_answer_and_are_held_back_while_streaming(tiny):
    model, processor = tiny
    prompt = encode(processor, conversations()[1])
    full = generate(model, processor, [prompt], GenerationOptions(max_new_tokens=16))[0].text
    stop = full[len(full) // 2: len(full) // 2 + 3]
    pieces = []
    cut = generate(model, processor, [prompt], GenerationOptions(max_new_tokens=16, stop=(stop, "never")),
                   on_delta=lambda i, t: pieces.append(t))[0]
    assert cut.text == full[:full.index(stop)] and cut.finish_reason == "stop"
    assert "".join(pieces) == cut.text and stop not in "".join(pieces)


def test_a_row_stops_when_its_listener_says_so(tiny):
    model, processor = tiny
    prompts = [encode(processor, c) for c in conversations()[:2]]
    done = generate(model, processor, prompts, GenerationOptions(max_new_tokens=10), on_delta=lambda i, t: i != 0)
    assert done[0].finish_reason == "cancelled" and done[0].completion_tokens == 1
    assert done[1].completion_tokens == 10


def test_seeded_sampling_is_reproducible(tiny):
    model, processor = tiny
    prompt = encode(processor, conversations()[1])
    a, b, c = (generate(model, processor, [prompt], GenerationOptions(max_new_tokens=8, temperature=1.0, seed=s))[0]
               for s in (1, 1, 2))
    assert a == b and a.text != c.text
    with pytest.raises(ValueError, match="batch_key"):  # seeded rows never share a batch
        generate(model, processor, [prompt, prompt], GenerationOptions(temperature=1.0, seed=1))


def test_incremental_decoding_is_exact_on_multibyte_text(tiny):
    _, processor = tiny
    tok = processor.tokenizer
    text = "Grüße, 世界! naïve café 🙂 done"
    row = _Row(tok, {tok.eos_token_id}, GenerationOptions(max_new_tokens=100))
    pieces = [row.push(t) for t in tok(text, add_special_tokens=False)["input_ids"]]
    pieces.append(row.push(tok.eos_token_id))
    assert "".join(pieces) == row.text == text and row.finish == "stop"


@pytest.mark.parametrize("bad", [dict(max_new_tokens=0), dict(temperature=-1), dict(temperature=3),
                                 dict(top_p=0), dict(top_p=1.5), dict(repetition_penalty=0)])
def test_options_are_validated(bad):
    with pytest.raises(EveError):
        GenerationOptions(**bad)


def test_load_errors(tmp_path, tiny_dir):
    with pytest.raises(EveError, match="config.json"):
        load(tmp_path)
    with pytest.raises(EveError, match="dtype"):
        load(tiny_dir, dtype="int3")
