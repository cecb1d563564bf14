"""The caption run loop: inputs (JSONL, folders, globs, shards), the LLaVA record format the trainer
reads, per-image failures that are reported and not fatal, and resuming after a SIGKILL with
exactly one record per image."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from eve_vlm.caption import run
from eve_vlm.caption.cli import expert_specs
from eve_vlm.caption.engine import errors_path, iter_inputs
from eve_vlm.caption.layout import LayoutExpert
from eve_vlm.cli import main
from eve_vlm.data.llava import parse_record
from eve_vlm.errors import EveError
from tiny import COLORS, ROOT, FailsOnWide, env, make_images, read_records

def test_folder_to_llava_caption_records(tmp_path):
    names = make_images(tmp_path / "imgs" / "sub", 3)
    out = tmp_path / "out" / "caps.jsonl"
    counts = run([str(tmp_path / "imgs")], str(out), [LayoutExpert()], progress=False)
    assert (counts["captioned"], counts["errors"], counts["skipped"]) == (3, 0, 0)
    records = sorted(read_records(out), key=lambda r: r["id"])
    assert [r["id"] for r in records] == [f"sub/{n}" for n in names]
    for r, color in zip(records, COLORS):
        assert r["conversations"][0] == {"from": "human", "value": "<image>"}
        caption = r["conversations"][1]["value"]
        assert f"A {color} rectangle on a white background" in caption
        assert (r["status"], r["fuser"], r["prompt_version"], r["fallback"], r["expert_errors"]) == \
            ("ok", "rule", None, False, {})
        assert r["experts"]["layout"]["version"] == "layout-1"
        assert r["experts"]["layout"]["facts"]["foreground"]["shape"] == "rectangle"
        # what the trainer reads: image paths relative to the caption file's folder
        parsed = parse_record(json.dumps(r).encode(), str(out.parent), r["id"])
        assert os.path.isfile(parsed["images"][0])
    assert read_records(errors_path(str(out))) == []


def test_jsonl_glob_shards_and_duplicates(tmp_path):
    names = make_images(tmp_path / "imgs", 8)
    for part, chunk in enumerate((names[:5], names[4:])):  # names[4] is in both files
        with open(tmp_path / f"part-{part}.jsonl", "w") as f:
            for n in chunk:
                f.write(json.dumps({"id": f"img-{n}", "image": f"imgs/{n}"}) + "\n")
            f.write("{not json\n")
    items = list(iter_inputs([str(tmp_path / "part-*.jsonl")]))
    assert [i.id for i in items if i.error] == ["part-0.jsonl:6", "part-1.jsonl:5"]
    assert items[0].image == str(tmp_path / "imgs" / "00.png")
    ids = set()
    for k in range(3):
        out = tmp_path / f"shard-{k}.jsonl"
        counts = run([str(tmp_path / "part-*.jsonl")], str(out), [LayoutExpert()], shard=(k, 3), progress=False)
        shard_ids = {r["id"] for r in read_records(out)}
        assert not shard_ids & ids
        ids |= shard_ids
        assert counts["duplicates"] == sum(1 for r in shard_ids if r == "img-04.png")
    assert ids == {f"img-{n}" for n in names}
    with pytest.raises(EveError, match="bad shard"):
        run([str(tmp_path / "imgs")], str(tmp_path / "x.jsonl"), [LayoutExpert()], shard=(3, 3))
    with pytest.raises(EveError, match="no file or folder matches"):
        run([str(tmp_path / "nothing-*.jsonl")], str(tmp_path / "x.jsonl"), [LayoutExpert()])


def test_failing_expert_and_unreadable_image_are_reported_not_fatal(tmp_path):
    make_images(tmp_path / "imgs", 3)  # widths 48, 52, 56
    (tmp_path / "imgs" / "03.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (tmp_path / "imgs" / "04.jpg").write_bytes(b"")
    out = str(tmp_path / "caps.jsonl")
    counts = run([str(tmp_path / "imgs")], out, [FailsOnWide(), LayoutExpert()], batch_size=8, progress=False)
    assert (counts["captioned"], counts["partial"], counts["errors"]) == (3, 2, 2)
    records = {r["id"]: r for r in read_records(out)}
    assert records["00.png"]["status"] == "ok"
    assert records["00.png"]["conversations"][1]["value"].startswith("It is 48 pixels wide. A wide image")
    for rid in ("01.png", "02.png"):
        r = records[rid]
        assert r["status"] == "partial" and r["expert_errors"] == {"picky": "ValueError: too wide"}
        assert set(r["experts"]) == {"layout"} and "rectangle" in r["conversations"][1]["value"]
    errors = {r["id"]: r for r in read_records(errors_path(out))}
    assert set(errors) == {"03.png", "04.jpg"}
    assert all(r["status"] == "error" and "image_unreadable" in r["error"] for r in errors.values())
    # a rerun skips both kinds; --retry-errors tries the errors again
    assert run([str(tmp_path / "imgs")], out, [LayoutExpert()], progress=False)["skipped"] == 5
    again = run([str(tmp_path / "imgs")], out, [LayoutExpert()], retry_errors=True, progress=False)
    assert (again["skipped"], again["errors"]) == (3, 2)


def test_every_expert_failing_is_an_error_record(tmp_path):
    make_images(tmp_path / "imgs", 2)
    out = str(tmp_path / "caps.jsonl")
    counts = run([str(tmp_path / "imgs")], out, [FailsOnWide()], batch_size=1, progress=False)
    assert (counts["captioned"], counts["errors"]) == (1, 1)
    (error,) = read_records(errors_path(out))
    assert error["id"] == "01.png" and error["error"] == "every expert failed: picky: ValueError: too wide"


def test_limit_and_bad_configurations(tmp_path):
    make_images(tmp_path / "imgs", 4)
    out = str(tmp_path / "caps.jsonl")
    assert run([str(tmp_path / "imgs")], out, [LayoutExpert()], limit=3, progress=False)["captioned"] == 3
    assert run([str(tmp_path / "imgs")], out, [LayoutExpert()], progress=False)["captioned"] == 1
    with pytest.raises(EveError, match="no experts"):
        run([str(tmp_path / "imgs")], out, [])
    with pytest.raises(EveError, match="share a name"):
        run([str(tmp_path / "imgs")], out, [LayoutExpert(), LayoutExpert()])


def test_expert_options_parsing():
    specs = expert_specs("layout, det=pipeline", ["det.task=object-detection", "det.threshold=0.5",
                                                  "det.labels=a,b"])
    assert specs == [("layout", {}), ("det=pipeline", {"task": "object-detection", "threshold": 0.5, "labels": "a,b"})]
    with pytest.raises(EveError, match="no expert named 'ocr'"):
        expert_specs("layout", ["ocr.psm=6"])
    with pytest.raises(EveError, match="EXPERT.OPTION=VALUE"):
        expert_specs("layout", ["psm=6"])


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["caption", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o.jsonl"),
                 "--experts", "layout"]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["caption", "--input", str(tmp_path), "--output", str(tmp_path / "o.jsonl"),
                 "--experts", "layout", "--fuser", "nonsense"]) == 2
    assert "give 'rule', a model folder, or an http(s):// endpoint URL" in capsys.readouterr().err


SLOW_EXPERT = '''
import time
from eve_vlm.caption import Expert

class Slow(Expert):
    name = "slow"

    def __call__(self, images):
        time.sleep(0.15 * len(images))
        return [{"pixels": image.width * image.height} for image in images]

    def describe(self, facts):
        return [f"It has {facts['pixels']} pixels."]
'''
CLI = "import sys; from eve_vlm.cli import main; sys.exit(main(sys.argv[1:]))"


def test_resume_after_sigkill_gives_one_record_per_image(tmp_path):
    names = make_images(tmp_path / "imgs", 40)
    (tmp_path / "slowexpert.py").write_text(SLOW_EXPERT)
    out = tmp_path / "caps.jsonl"
    argv = [sys.executable, "-c", CLI, "caption", "--input", str(tmp_path / "imgs"), "--output", str(out),
            "--experts", "layout,slow=slowexpert:Slow", "--batch-size", "1", "--workers", "2"]
    run_env = env(PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "src"), str(tmp_path)]))
    proc = subprocess.Popen(argv, env=run_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out.exists() and out.read_text().count("\n") >= 5):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no records after 120 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = out.read_text().count("\n")
    assert 5 <= written < len(names)  # killed mid-run
    with open(out, "a") as f:  # as if the kill had come in the middle of a write
        f.write('{"id": "07.png", "image": "imgs/07.png", "conversa')
    done = subprocess.run(argv, env=run_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{written} done before" in done.stderr
    lines = out.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is whole
    assert sorted(r["id"] for r in records) == names
    assert all(r["status"] == "ok" and "slow" in r["experts"] for r in records)
