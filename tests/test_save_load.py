"""save_pretrained -> from_pretrained / Auto classes give identical weights and logits."""

import torch
from transformers import AutoConfig, AutoModelForImageTextToText

import eve_vlm
from tiny import image, row, tiny_eve


def test_round_trip_and_auto_classes(tmp_path):
    model = tiny_eve(decoupled=["ffn"])
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert AutoConfig.from_pretrained(tmp_path).decoupled == ["ffn"]
    for cls in (eve_vlm.EveForConditionalGeneration, AutoModelForImageTextToText):
        loaded = cls.from_pretrained(tmp_path).eval()
        assert isinstance(loaded, eve_vlm.EveForConditionalGeneration)
        r, imgs = row(model, 3, image(64, 64), 4)
        with torch.no_grad():
            assert torch.equal(loaded(r[None], pixel_values=imgs).logits, model(r[None], pixel_values=imgs).logits)
