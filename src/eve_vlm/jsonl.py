"""Resumable JSONL output files: `eve infer` answers, evaluation predictions, caption records and
training metrics are all appended one line per record by long runs that may be killed at any
moment, then reread by the next run to skip what is done.

One rule for a killed run: a last line without its newline was cut mid-write and never counts.
Readers ignore it, and a writer cuts it off before appending, so a resumed run never glues a
record onto half of another. Any other line that is not a JSON object is damage no kill can
cause, and an error naming the file and line. A writer holds an exclusive lock on its file, so two
runs can never interleave their lines.
"""

import fcntl
import json
import os
from collections.abc import Iterable, Iterator

from .errors import EveError

_BLOCK = 1 << 16


def read_jsonl(path: str) -> Iterator[dict]:
    """The complete records of `path`, in file order; nothing when the file does not exist."""
    if not os.path.exists(path):
        return
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                return
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise EveError(f"{path}, line {number}: not JSON ({exc}); delete the line or the file") from exc
            if not isinstance(record, dict):
                raise EveError(f"{path}, line {number}: a {type(record).__name__}, not a JSON object")
            yield record


class JsonlWriter:
    """Appends records to `path`, owned by this writer until `close` (a second writer on the same
    file, in any process, fails at once). `write` hands each line to the OS, so a killed process
    loses nothing written; `sync` puts everything on disk, so a machine crash loses nothing either."""

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path, self.f = path, open(path, "a+b")
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self.f.close()
            raise EveError(f"{path}: another run is writing this file") from exc
        end = self.f.seek(0, os.SEEK_END)
        cut = _after_last_newline(self.f, end)
        if cut != end:
            self.f.truncate(cut)

    def write(self, record: dict) -> None:
        self.f.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
        self.f.flush()

    def replace(self, records: Iterable[dict]) -> None:
        """Start the file over with `records` (e.g. what survives of an earlier attempt)."""
        self.f.truncate(0)
        for record in records:
            self.write(record)
        self.sync()

    def sync(self) -> None:
        os.fsync(self.f.fileno())

    def close(self) -> None:
        if not self.f.closed:
            self.sync()
            self.f.close()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _after_last_newline(f, end: int) -> int:
    """The offset just past the last newline of the first `end` bytes of `f` (0 when none)."""
    pos = end
    while pos > 0:
        step = min(pos, _BLOCK)
        pos -= step
        f.seek(pos)
        chunk = f.read(step)
        if b"\n" in chunk:
            return pos + chunk.rfind(b"\n") + 1
    return 0
