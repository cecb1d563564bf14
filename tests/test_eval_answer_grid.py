"""The answer picture (eval.answer_grid): which answers it shows and what it draws."""

from PIL import Image

from eve_vlm.eval.answer_grid import RIGHT, WRONG, pick_examples, write_answer_grid
from tiny import easyvqa_results

TYPES = {"color", "shape", "yes_no_color", "yes_no_shape"}


def test_picks_different_images_and_takes_the_question_types_in_turn():
    predictions = easyvqa_results()["predictions"]
    picked = pick_examples(predictions, 16)
    assert len(picked) == 16
    assert len({r["image"] for r in picked}) == 16
    assert [r["group"] for r in picked[:4]] == sorted(TYPES)
    assert {r["group"] for r in picked} == TYPES and all(
        sum(r["group"] == t for r in picked) == 4 for t in TYPES)
    assert pick_examples(predictions, 16) == picked  # deterministic
    assert pick_examples(predictions, 5) == picked[:5]  # a smaller count is a prefix: print and picture agree
    # the demo's first rows are all about image 0; the old printout showed only those
    assert len({r["image"] for r in predictions[:8]}) == 1


def test_runs_out_of_images_rather_than_repeating_one():
    predictions = [r for r in easyvqa_results(60)["predictions"] if r["image"].endswith(("/0.png", "/1.png"))]
    picked = pick_examples(predictions, 16)
    assert len(picked) == 2 and len({r["image"] for r in picked}) == 2


def test_grid_draws_every_image_with_right_and_wrong_colours(tmp_path):
    picked = pick_examples(easyvqa_results()["predictions"], 16)
    out = tmp_path / "answers.png"
    layout = write_answer_grid(picked, str(out), columns=4, image_size=128)
    png = Image.open(out).convert("RGB")
    assert png.size == layout["size"] and png.size[0] == 4 * 256 and png.size[1] > 4 * 128
    cells = layout["cells"]
    assert [c["id"] for c in cells] == [r["id"] for r in picked]
    assert {c["right"] for c in cells} == {True, False}  # the test data makes every third answer wrong
    tiles = set()
    for cell, row in zip(cells, picked):
        left, top, right, bottom = cell["image_box"]
        assert (right - left, bottom - top) == (128, 128)
        tile = png.crop(cell["image_box"])
        with Image.open(row["image"]) as source:  # the image itself, upscaled 2x nearest neighbour
            assert tile.tobytes() == source.convert("RGB").resize((128, 128), Image.Resampling.NEAREST).tobytes()
        tiles.add(tile.tobytes())
        color = RIGHT if row["scores"]["exact_match"] == 1 else WRONG
        assert cell["color"] == color
        fl, ft, fr, fb = cell["frame_box"]
        assert png.getpixel((fl, ft)) == color and png.getpixel((fr - 1, (ft + fb) // 2)) == color
        # the answer line is written in the same colour, below the frame
        text = png.crop(cell["text_box"])
        assert sum(1 for p in text.getdata() if p == color) > 10
        assert not any(p == (WRONG if color == RIGHT else RIGHT) for p in text.getdata())
    assert len(tiles) == 16  # 16 different pictures
