"""The lmms-eval adapter's request handling, against the real lmms-eval base class and request shape."""

import types

import pytest
from lmms_common import continuation_logprobs, token_ids
from PIL import Image
from tiny import save_images

from eve_vlm.infer.predictors import DirectPredictor
from eve_vlm.integrations.lmms_eval import EveLmms


@pytest.fixture
def adapter(eve_toy_dir, tmp_path):
    lm = EveLmms(pretrained=eve_toy_dir, batch_size="2", max_batch_size=None, device="cpu")
    save_images(tmp_path, "1.png", "2.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    lm.task_dict = {"t": {"test": [{"image": str(tmp_path / f"{name}.png"), "q": q} for name, q in
                                   (("1", "What colour is it?"), ("2", "What shape?"), ("bad", "Why?"))]}}
    return lm


def _visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]


def _request(*args):
    return types.SimpleNamespace(args=args)


def test_the_entry_point_registers_eve_with_lmms_eval():
    from lmms_eval.models import get_model

    assert get_model("eve") is EveLmms


def test_generate_until_matches_eve_eval_and_survives_bad_images(adapter):
    gen = {"max_new_tokens": 5, "until": [], "do_sample": False, "temperature": 0}
    requests = [_request(doc["q"], dict(gen), _visual, i, "t", "test")
                for i, doc in enumerate(adapter.task_dict["t"]["test"])]
    replies = adapter.generate_until(requests)
    direct = DirectPredictor.__new__(DirectPredictor)  # same weights: reuse the adapter's model
    direct.model, direct.processor = adapter.model, adapter.processor
    docs = adapter.task_dict["t"]["test"][:2]
    assert replies[:2] == direct.predict([(d["q"], d["image"]) for d in docs], 5)
    assert replies[2] == ""  # unreadable image: answered "" (scored wrong), the rest still run
    # a task that places its image itself with <image> gets the same prompt
    assert adapter.generate_until([_request("<image>\n" + docs[0]["q"], dict(gen), _visual, 0, "t", "test")]) == \
        replies[:1]


def test_loglikelihood_is_the_mean_loss_of_the_continuation(adapter):
    doc = adapter.task_dict["t"]["test"][0]
    (ab_loss, _), (a_loss, a_greedy) = [r.text for r in adapter.loglikelihood(
        [_request(doc["q"], cont, _visual, 0, "t", "test") for cont in ("ab", "a")])]
    logp = continuation_logprobs(adapter.model, adapter.processor, doc["q"], doc["image"], "ab")
    a, b = token_ids(adapter.processor, "ab")
    assert a_loss == pytest.approx(-logp[0, a].item(), abs=1e-4)
    assert ab_loss == pytest.approx(-(logp[0, a].item() + logp[1, b].item()) / 2, abs=1e-4)  # mean per token
    assert a_greedy == (logp[0].argmax().item() == a)
