"""The resumable JSONL files every long run appends to (infer, eval, caption, metrics)."""

import os
import subprocess
import sys

import pytest

from eve_vlm import jsonl
from eve_vlm.errors import EveError
from eve_vlm.jsonl import JsonlWriter, read_jsonl

HOLD_LOCK = """
import fcntl, sys
f = open(sys.argv[1], "a")
fcntl.flock(f, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_torn_last_line_is_ignored_then_cut_before_appending(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "conv')
    assert [r["id"] for r in read_jsonl(str(path))] == ["a", "b"]
    with JsonlWriter(str(path)) as out:
        out.write({"id": "d", "text": "é"})
    assert path.read_text(encoding="utf-8") == '{"id": "a"}\n{"id": "b"}\n{"id": "d", "text": "é"}\n'


def test_a_resumed_run_skips_the_ids_already_written(tmp_path):
    path = str(tmp_path / "sub" / "out.jsonl")
    assert list(read_jsonl(path)) == []
    for attempt in (["a", "b"], ["a", "b", "c", "d"]):
        with JsonlWriter(path) as out:
            done = {r["id"] for r in read_jsonl(path)}
            for rid in attempt:
                if rid not in done:
                    out.write({"id": rid})
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b", "c", "d"]


def test_a_file_locked_by_another_process_is_refused(tmp_path):
    path = str(tmp_path / "out.jsonl")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, path], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(EveError, match="another run is writing"):
            JsonlWriter(path)
    finally:
        holder.communicate("")
    with JsonlWriter(path) as out:  # the lock went with its process
        out.write({"id": "a"})
    first = JsonlWriter(path)  # one process, two writers: refused as well
    with pytest.raises(EveError, match="another run is writing"):
        JsonlWriter(path)
    first.close()


def test_sync_and_close_reach_the_disk(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(jsonl.os, "fsync", lambda fd: synced.append(os.fstat(fd).st_size))
    out = JsonlWriter(str(tmp_path / "out.jsonl"))
    out.write({"id": "a"})
    assert synced == []
    out.sync()
    assert synced == [len('{"id": "a"}\n')]
    out.replace([{"id": "b"}, {"id": "c"}])
    out.close()
    assert synced[1:] == [2 * len('{"id": "b"}\n')] * 2


@pytest.mark.parametrize("line, message", [("{not json", "not JSON"), ("[1, 2]", "a list, not a JSON object")])
def test_a_bad_line_in_the_middle_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "out.jsonl"
    path.write_text('{"id": "a"}\n\n' + line + '\n{"id": "b"}\n')
    with pytest.raises(EveError, match=f"out.jsonl, line 3: {message}"):
        list(read_jsonl(str(path)))
