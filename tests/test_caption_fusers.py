"""Fusers: the rule fuser states every fact; the prompt templates are versioned files recorded with
every caption; the endpoint fuser against a real `eve serve` (tiny random model: the captions are
junk, the plumbing is what is tested), its concurrency bound and its fallback when the endpoint
fails; the in-process model fuser."""

import re
import shutil

import pytest

from eve_vlm.caption import PromptTemplate, RuleFuser, load_expert, load_fuser, run
from eve_vlm.caption.engine import analyze, iter_inputs
from eve_vlm.caption.fusers import FuseItem
from eve_vlm.caption.layout import LayoutExpert
from eve_vlm.errors import EveError
from tiny import eve_process, fake_server, free_port, make_images, read_records

needs_tesseract = pytest.mark.skipif(shutil.which("tesseract") is None,
                                     reason="the tesseract binary is not installed (apt-get install tesseract-ocr)")


def facts_in(caption: str, experts: dict) -> list[str]:
    """The facts of the layout / ocr outputs that `caption` does not state."""
    missing = []
    layout = experts["layout"]["facts"]
    wanted = [f"{layout['width']}x{layout['height']}", layout.get("background")]
    fg = layout.get("foreground", {})
    wanted += [c["name"] for c in fg.get("colors", [])] + [fg.get("shape"), fg.get("position")]
    if fg and "shape" not in fg:
        wanted.append(f"{fg['regions']} ")
    wanted += [f'"{line}"' for line in experts.get("ocr", {}).get("facts", {}).get("lines", [])]
    for fact in filter(None, wanted):
        if not re.search(r"(^|\W)" + re.escape(str(fact)), caption):
            missing.append(fact)
    return missing


@needs_tesseract
def test_rule_fuser_states_every_fact(tmp_path):
    from eve_vlm.data.textimage import generate

    generate(str(tmp_path / "text"), num=12, seed=2)
    make_images(tmp_path / "shapes", 6)
    out = str(tmp_path / "caps.jsonl")
    run([str(tmp_path / "text" / "images"), str(tmp_path / "shapes")], out, [LayoutExpert(), load_expert("ocr")],
        progress=False)
    records = read_records(out)
    assert len(records) == 18 and sum(bool(r["experts"]["ocr"]["facts"]["lines"]) for r in records) >= 9
    for r in records:
        assert facts_in(r["conversations"][1]["value"], r["experts"]) == [], r


def test_rule_fuser_joins_statements_in_order():
    item = FuseItem("x.png", [("layout", "A square image."), ("ocr", 'The text "hi" is written in the image.')])
    assert RuleFuser().fuse([item]) == ['A square image. The text "hi" is written in the image.']


def test_prompt_templates_are_versioned_files(tmp_path):
    prompt = PromptTemplate.load()
    assert prompt.version == "fuse-v1" and len(prompt.sha) == 12
    text = prompt.render([("layout", "A red circle."), ("ocr", 'The text "7" is written in the image.')])
    assert "- layout: A red circle.\n- ocr: The text \"7\" is written in the image." in text
    assert "{facts}" not in text
    mine = tmp_path / "my-prompt-v3.txt"
    mine.write_text("Facts:\n{facts}\nDescribe.")
    custom = PromptTemplate.load(str(mine))
    assert custom.version == "my-prompt-v3" and custom.render([]) == "Facts:\n- (none)\nDescribe."
    (tmp_path / "bad.txt").write_text("no slot")
    with pytest.raises(EveError, match="no {facts} slot"):
        PromptTemplate.load(str(tmp_path / "bad.txt"))
    with pytest.raises(EveError, match="not a built-in prompt"):
        PromptTemplate.load("fuse-v999")


def test_endpoint_fuser_against_eve_serve(tiny_dir, tmp_path):  # noqa: F811
    make_images(tmp_path / "imgs", 5)
    out = str(tmp_path / "caps.jsonl")
    port = free_port()
    with eve_process("serve", "--model", tiny_dir, "--port", str(port), "--log-level", "warning", port=port):
        fuser = load_fuser(f"http://127.0.0.1:{port}", max_new_tokens=6)
        counts = run([str(tmp_path / "imgs")], out, [LayoutExpert()], fuser, concurrency=3, progress=False)
    assert (counts["captioned"], counts["fallback"]) == (5, 0)
    prompt = PromptTemplate.load()
    for r in read_records(out):
        assert r["fuser"] == f"endpoint:{tiny_dir.rstrip('/').split('/')[-1]}"
        assert r["prompt_version"] == f"fuse-v1@{prompt.sha}" and r["status"] == "ok" and not r["fallback"]
        assert r["conversations"][1]["value"] and "layout" in r["experts"]


def test_endpoint_concurrency_is_bounded(tmp_path):
    make_images(tmp_path / "imgs", 12)
    out = str(tmp_path / "caps.jsonl")
    with fake_server() as server:
        run([str(tmp_path / "imgs")], out, [LayoutExpert()], load_fuser(server.url), concurrency=3, progress=False)
    assert server.peak == 3 and len(server.prompts) == 12
    image_part, text_part = server.prompts[0]
    assert image_part["image_url"]["url"].startswith("data:image/png;base64,")
    assert "- layout: A wide image, " in text_part["text"]
    records = read_records(out)
    assert [r["conversations"][1]["value"] for r in records] == ["A fused caption."] * 12
    assert all(r["fuser"] == "endpoint:fake" for r in records)


def test_endpoint_failure_falls_back_to_the_rule_caption(tmp_path):
    make_images(tmp_path / "imgs", 3)
    out = str(tmp_path / "caps.jsonl")
    with fake_server(delay=0) as server:
        fuser = load_fuser(server.url, timeout=10)
        server.fail = True
        counts = run([str(tmp_path / "imgs")], out, [LayoutExpert()], fuser, concurrency=3, progress=False)
    assert (counts["captioned"], counts["fallback"], counts["partial"]) == (3, 3, 3)
    rule = RuleFuser()
    for r, item in zip(sorted(read_records(out), key=lambda r: r["id"]), iter_inputs([str(tmp_path / "imgs")])):
        (analysis,) = analyze([item], [LayoutExpert()])
        assert r["conversations"][1]["value"] == rule.fuse([FuseItem(item.image, analysis.statements)])[0]
        assert (r["status"], r["fuser"], r["fallback"], r["prompt_version"]) == ("partial", "rule", True, None)
        assert r["fuser_error"].startswith("endpoint:fake: InternalServerError")


def test_endpoint_down_at_start_is_a_clear_error():
    with pytest.raises(EveError, match="cannot list the models"):
        load_fuser(f"http://127.0.0.1:{free_port()}", timeout=2)


def test_model_fuser_in_process(tiny_dir, tmp_path):  # noqa: F811
    make_images(tmp_path / "imgs", 3)
    out = str(tmp_path / "caps.jsonl")
    fuser = load_fuser(tiny_dir, max_new_tokens=5, batch_size=2)
    assert (fuser.batch_size, fuser.max_concurrency) == (2, 1)
    counts = run([str(tmp_path / "imgs")], out, [LayoutExpert()], fuser, concurrency=4, progress=False)
    assert counts["captioned"] == 3
    for r in read_records(out):
        assert r["fuser"].startswith("model:") and r["prompt_version"].startswith("fuse-v1@")
        assert r["conversations"][1]["value"] and not r["fallback"]


class LosesReplies(RuleFuser):
    name = "lossy"
    batch_size = 4

    def fuse(self, items):
        return ["only one"]


def test_a_fuser_that_loses_replies_falls_back_for_every_image(tmp_path):
    make_images(tmp_path / "imgs", 3)
    out = str(tmp_path / "caps.jsonl")
    assert run([str(tmp_path / "imgs")], out, [LayoutExpert()], LosesReplies(), progress=False)["fallback"] == 3
    for r in read_records(out):
        assert r["fuser"] == "rule" and r["fuser_error"] == "lossy: EveError: the fuser returned 1 replies for 3 images"
