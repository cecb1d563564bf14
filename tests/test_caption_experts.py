"""Caption experts on real images: Tesseract reads rendered text, the layout expert finds the
colour and shape of easy-VQA images, the transformers pipeline adapter runs real (tiny, random,
local) models; the registry and per-image failure isolation."""

import json
import random
import shutil

import pytest
from PIL import Image

from eve_vlm.caption import Expert, load_expert, register_expert, run_experts
from eve_vlm.caption.layout import LayoutExpert, color_name
from eve_vlm.caption.pipeline import PipelineExpert
from eve_vlm.data.textimage import PALETTE, generate, render
from eve_vlm.errors import EveError

needs_tesseract = pytest.mark.skipif(shutil.which("tesseract") is None,
                                     reason="the tesseract binary is not installed (apt-get install tesseract-ocr)")


def easyvqa_images(n: int, split: str = "test") -> list[tuple[Image.Image, str | None, str | None]]:
    from eve_vlm.data.easyvqa import _by_image, facts

    by_image, paths = _by_image(split)
    return [(Image.open(paths[i]).convert("RGB"), *facts(*zip(*by_image[i]))) for i in sorted(by_image)[:n]]


@needs_tesseract
def test_ocr_reads_rendered_words_with_boxes():
    image = render("hello world 2024", (320, 96), PALETTE["black"], PALETTE["white"], random.Random(3))
    facts = load_expert("ocr")([image])[0]
    assert [w["text"].lower() for w in facts["words"]] == ["hello", "world", "2024"]
    assert facts["lines"] == [" ".join(w["text"] for w in facts["words"])]
    for w in facts["words"]:
        x0, y0, x1, y1 = w["box"]
        assert 0 <= x0 < x1 <= 320 and 0 <= y0 < y1 <= 96 and w["conf"] >= 50
    assert facts["words"][0]["box"][0] < facts["words"][1]["box"][0]  # in reading order


@needs_tesseract
def test_ocr_on_the_text_image_set(tmp_path):
    generate(str(tmp_path), num=24, seed=5)
    records = [json.loads(line) for line in open(tmp_path / "captions.jsonl")]
    images = [Image.open(tmp_path / "images" / r["image"]).convert("RGB") for r in records]
    facts = load_expert("ocr")(images)  # one batch
    truth = [w for r in records for w in r["text"].lower().split()]
    found = [w for r, f in zip(records, facts) for w in r["text"].lower().split()
             if w in {x["text"].lower() for x in f["words"]}]
    assert len(found) >= 0.8 * len(truth), (found, truth)
    invented = [x["text"] for r, f in zip(records, facts) for x in f["words"]
                if x["text"].lower() not in r["text"].lower().split()]
    assert len(invented) <= 2, invented


@needs_tesseract
def test_ocr_reads_nothing_in_shapes():
    facts = load_expert("ocr")([image for image, _, _ in easyvqa_images(12)])
    assert all(f["words"] == [] and f["lines"] == [] for f in facts)


def test_ocr_without_the_binary_says_how_to_install(monkeypatch):
    pytesseract = pytest.importorskip("pytesseract")
    monkeypatch.setattr(pytesseract.pytesseract, "tesseract_cmd", "no-such-tesseract-binary")
    with pytest.raises(EveError, match="apt-get install tesseract-ocr"):
        load_expert("ocr")


def test_layout_finds_color_and_shape_of_easyvqa_images():
    expert = LayoutExpert()
    samples = [s for s in easyvqa_images(60) if s[1] and s[2]]
    facts = expert([image for image, _, _ in samples])
    assert len(samples) > 40
    for (image, color, shape), f in zip(samples, facts):
        fg = f["foreground"]
        assert (fg["colors"][0]["name"], fg.get("shape")) == (color, shape)
        assert f["background"] in ("white", "beige") and fg["regions"] == 1 and 0 < fg["coverage"] < 0.5
        sentence = " ".join(expert.describe(f))
        assert f"{color} {shape}" in sentence and "64x64" in sentence


def test_layout_regions_position_and_size():
    image = Image.new("RGB", (200, 100), "white")
    image.paste((200, 30, 30), (150, 5, 190, 25))  # red block, top right
    image.paste((200, 30, 30), (150, 40, 190, 70))  # a second one under it
    f = LayoutExpert()([image])[0]
    assert (f["width"], f["height"], f["aspect_ratio"], f["orientation"]) == (200, 100, 2.0, "landscape")
    fg = f["foreground"]
    assert fg["regions"] == 2 and fg["position"] == "right" and "shape" not in fg
    assert fg["box"] == [0.75, 0.05, 0.95, 0.7]
    assert LayoutExpert().describe(f)[1] == "2 red regions on a white background, on the right of the image."
    photo = LayoutExpert()([Image.effect_noise((64, 64), 80).convert("RGB")])[0]
    assert "background" not in photo and "colors" in photo  # no uniform border: overall colours


def test_color_names():
    for name, rgb in PALETTE.items():  # the text-image palette names itself
        assert color_name(rgb) == name
    assert color_name((0, 128, 128)) == "teal" and color_name((165, 42, 42)) == "brown"


@pytest.fixture(scope="module")
def tiny_detr(tmp_path_factory):
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, ResNetConfig

    path = tmp_path_factory.mktemp("detr")
    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1],
                            out_features=["stage4"])
    config = DetrConfig(use_timm_backbone=False, backbone_config=backbone, use_pretrained_backbone=False, d_model=16,
                        encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                        encoder_ffn_dim=16, decoder_ffn_dim=16, num_queries=5, id2label={0: "cat", 1: "dog"},
                        label2id={"cat": 0, "dog": 1})
    DetrForObjectDetection(config).save_pretrained(path)
    DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}).save_pretrained(path)
    return str(path)


def test_pipeline_expert_runs_a_local_detection_model(tiny_detr):
    expert = load_expert("det=pipeline", task="object-detection", model=tiny_detr, threshold=0.0)
    assert expert.name == "det" and tiny_detr in expert.version
    facts = expert([Image.new("RGB", (64, 48), "red"), Image.new("RGB", (32, 32), "blue")])
    assert len(facts) == 2
    for f in facts:
        assert len(f["objects"]) == 5 and all(o["label"] in ("cat", "dog") for o in f["objects"])
        assert all(0 <= v <= 1 for o in f["objects"] for v in o["box"])  # relative to the image size
    assert expert.describe(facts[0])[0].startswith("Objects detected: ")


def test_pipeline_expert_runs_a_local_classifier(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=16, id2label={0: "cat", 1: "dog"}, label2id={"cat": 0, "dog": 1})
    ViTForImageClassification(config).save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    expert = PipelineExpert("image-classification", model=str(tmp_path), threshold=0.0)
    (f,) = expert([Image.new("RGB", (40, 30), "green")])
    assert sorted(x["label"] for x in f["labels"]) == ["cat", "dog"]
    assert expert.describe(f)[0].startswith("Tags: ")


class FakePipeline:
    """Answers like transformers' zero-shot and image-text-to-text pipelines, recording calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, images=None, text=None, **kwargs):
        self.calls.append(kwargs)
        if "candidate_labels" in kwargs:
            return [[{"label": lab, "score": s} for lab, s in zip(kwargs["candidate_labels"], (0.7, 0.2, 0.1))]
                    for _ in images]
        return [[{"generated_text": f"STOP {len(text)}"}] for _ in text]


def test_pipeline_expert_zero_shot_and_text_tasks():
    pipe = FakePipeline()
    tags = PipelineExpert("zero-shot-image-classification", pipe=pipe, labels="dog, cat,car", threshold=0.15)
    facts = tags([Image.new("RGB", (8, 8))] * 2)
    assert pipe.calls[0]["candidate_labels"] == ["dog", "cat", "car"]
    assert facts[0] == {"labels": [{"label": "dog", "score": 0.7}, {"label": "cat", "score": 0.2}]}
    assert tags.describe(facts[0]) == ["Tags: dog, cat."]
    reader = PipelineExpert("image-text-to-text", pipe=pipe, prompt="Read it.")
    assert reader([Image.new("RGB", (8, 8))])[0] == {"text": "STOP 1"}
    assert pipe.calls[-1]["return_full_text"] is False
    with pytest.raises(EveError, match="needs labels"):
        PipelineExpert("zero-shot-object-detection", pipe=pipe)
    with pytest.raises(EveError, match="unknown task"):
        PipelineExpert("depth-estimation", pipe=pipe)
    with pytest.raises(EveError, match="model=PATH"):
        PipelineExpert("object-detection")


class Flaky(Expert):
    name = "flaky"

    def __call__(self, images):
        if any(image.size == (13, 13) for image in images):
            raise RuntimeError("cannot handle 13x13")
        return [{"size": list(image.size)} for image in images]


def test_a_failing_expert_costs_only_the_image_at_fault():
    images = [Image.new("RGB", (10, 10)), Image.new("RGB", (13, 13)), Image.new("RGB", (20, 10))]
    facts, errors = run_experts([Flaky(), LayoutExpert()], images)
    assert [f.get("flaky") for f in facts] == [{"size": [10, 10]}, None, {"size": [20, 10]}]
    assert all("layout" in f for f in facts)
    assert errors == [{}, {"flaky": "RuntimeError: cannot handle 13x13"}, {}]


class NotSerializable(Expert):
    name = "bad"

    def __call__(self, images):
        return [{"x": object()} for _ in images]


def test_expert_outputs_are_checked():
    facts, errors = run_experts([NotSerializable()], [Image.new("RGB", (4, 4))])
    assert facts == [{}] and "not JSON serializable" in errors[0]["bad"]


def test_registry_and_module_class_specs():
    assert isinstance(load_expert("layout"), LayoutExpert)
    assert load_expert("eve_vlm.caption.layout:LayoutExpert").name == "layout"
    assert load_expert("colors=eve_vlm.caption.layout:LayoutExpert").name == "colors"
    register_expert("flaky-test", Flaky)
    assert isinstance(load_expert("flaky-test"), Flaky)
    with pytest.raises(EveError, match="unknown expert 'nope'"):
        load_expert("nope")
    with pytest.raises(EveError, match="cannot load expert"):
        load_expert("no_such_module:Thing")
    with pytest.raises(EveError, match="bad options"):
        load_expert("layout", psm=3)
