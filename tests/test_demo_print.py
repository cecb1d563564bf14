"""What the demo prints and draws after its evaluation (demo.print_results), on fake results."""

import io

from PIL import Image
from rich.console import Console

from eve_vlm import demo
from eve_vlm.eval.yesno import yes_no_rows, yes_no_split
from tiny import easyvqa_results


def test_prints_accuracy_yes_no_split_and_examples_from_different_images(tmp_path, monkeypatch):
    console = Console(width=110, record=True, file=io.StringIO())
    monkeypatch.setattr(demo, "console", console)
    results = easyvqa_results(300)
    picture = tmp_path / "answers.png"
    demo.print_results(results, 8, str(picture))
    text = console.export_text()

    assert "300 test questions, exact match" in text and "yes_no_shape" in text
    for label, yes, no in yes_no_rows(yes_no_split(results["predictions"])):
        assert any(label in line and yes in line and no in line for line in text.splitlines())
    examples = [line for line in text.splitlines() if line.startswith("  ") and "->" in line]
    assert len(examples) == 8
    assert len({line.split()[0] for line in examples}) == 8  # eight different image files
    assert {t for line in examples for t in ("(color)", "(shape)", "(yes_no_color)", "(yes_no_shape)")
            if t in line} == {"(color)", "(shape)", "(yes_no_color)", "(yes_no_shape)"}
    assert "wrong" in text and "right" in text
    assert Image.open(picture).size[0] == 4 * 256 and str(picture) in text.replace("\n", "")


def test_without_yes_no_questions_or_picture(monkeypatch):
    console = Console(width=110, record=True, file=io.StringIO())
    monkeypatch.setattr(demo, "console", console)
    results = easyvqa_results(300)
    results["predictions"] = [r for r in results["predictions"] if r["answers"][0] not in ("yes", "no")]
    demo.print_results(results, 3)
    text = console.export_text()
    assert "right answer yes" not in text and "drawn" not in text
    assert len([line for line in text.splitlines() if "->" in line]) == 3
