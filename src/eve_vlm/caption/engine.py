"""The caption run loop: images -> experts -> fuser -> LLaVA caption records, resumable.

Inputs: JSONL files of {"id", "image"} records (paths relative to the file; a record without an
id is keyed by its image path), image folders (searched recursively; the id is the path inside
the folder), or globs of either. `shard=(k, n)` keeps the ids whose CRC32 is k modulo n, so n
processes (or machines) split one input without talking to each other.

Output: one line per image, in completion order, flushed as it is written, so a killed run loses
nothing it wrote, and a rerun skips every id already in the output and continues; a line torn
by the kill is cut off first, and its image captioned again. Images that cannot be captioned
(unreadable, every expert failed) get a line in OUTPUT's sibling `*.errors.jsonl` instead, so
the caption file stays clean training data; they are not retried unless `retry_errors`.

Concurrency: `workers` threads run the experts on batches of images while up to `concurrency`
fuser calls are in flight (one endpoint request each, or one batch of an in-process model).
"""

import collections
import concurrent.futures
import dataclasses
import glob
import json
import os
import sys
import time
import zlib
from collections.abc import Iterator

from tqdm import tqdm

from ..errors import EveError
from ..jsonl import JsonlWriter, read_jsonl
from ..processing import load_image
from ..processing.chat import IMAGE_MARKER
from .experts import run_experts
from .fusers import FuseItem, RuleFuser

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclasses.dataclass(frozen=True)
class Item:
    id: str
    image: str | None  # absolute path; None when the input record itself is broken
    error: str | None = None


def _read_jsonl(path: str) -> Iterator[Item]:
    base = os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{os.path.basename(path)}:{n}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield Item(where, None, f"bad input record: not JSON: {exc}")
                continue
            image = record.get("image") if isinstance(record, dict) else None
            if not isinstance(image, str) or not image:
                yield Item(where, None, 'bad input record: it needs "image": a file path')
                continue
            rid = record.get("id", image)
            yield Item(str(rid), os.path.join(base, os.path.expanduser(image)))


def _read_dir(path: str) -> Iterator[Item]:
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                full = os.path.join(root, name)
                yield Item(os.path.relpath(full, path).replace(os.sep, "/"), os.path.abspath(full))


def iter_inputs(specs: list[str]) -> Iterator[Item]:
    for spec in specs:
        paths = sorted(glob.glob(spec)) if any(c in spec for c in "*?[") else [spec]
        if not paths:
            raise EveError(f"--input {spec}: no file or folder matches")
        for path in paths:
            if os.path.isdir(path):
                yield from _read_dir(path)
            elif os.path.isfile(path):
                yield from _read_jsonl(path)
            else:
                raise EveError(f"--input {path}: no such file or folder")


def in_shard(rid: str, shard: tuple[int, int]) -> bool:
    k, n = shard
    return n == 1 or zlib.crc32(rid.encode()) % n == k


def errors_path(output: str) -> str:
    stem, ext = os.path.splitext(output)
    return f"{stem}.errors{ext or '.jsonl'}"


def written_ids(path: str) -> set:
    return {record["id"] for record in read_jsonl(path)}


@dataclasses.dataclass
class Analysis:
    item: Item
    experts: dict  # expert name -> {"version", "facts"}
    errors: dict  # expert name -> message
    statements: list  # (expert name, sentence)


def analyze(items: list[Item], experts: list) -> list:
    """Load the images and run the experts: an Analysis per item, or an error record."""
    loaded, results = [], []
    for item in items:
        try:
            if item.error:
                raise EveError(item.error)
            loaded.append((item, load_image(item.image)))
        except Exception as exc:  # noqa: BLE001 -- reported in this image's error record
            results.append(error_record(item, f"{type(exc).__name__}: {exc}"))
    if not loaded:
        return results
    facts, errors = run_experts(experts, [image for _, image in loaded])
    for (item, _), f, err in zip(loaded, facts, errors):
        outputs, statements = {}, []
        for expert in experts:
            if expert.name not in f:
                continue
            try:
                statements += [(expert.name, s) for s in expert.describe(f[expert.name])]
                outputs[expert.name] = {"version": expert.version, "facts": f[expert.name]}
            except Exception as exc:  # noqa: BLE001 -- a describe bug fails this expert, not the run
                err[expert.name] = f"describe: {type(exc).__name__}: {exc}"
        if outputs:
            results.append(Analysis(item, outputs, err, statements))
        else:
            results.append(error_record(item, "every expert failed: " + "; ".join(f"{k}: {v}" for k, v in err.items())))
    return results


def error_record(item: Item, message: str) -> dict:
    return {"id": item.id, "image": item.image, "status": "error", "error": message}


def fuse(analyses: list[Analysis], fuser, out_dir: str, rule: RuleFuser) -> list[dict]:
    """Caption records for analysed images; a fuser failure (an exception or an empty reply)
    falls back to the rule caption, marked in the record."""
    items = [FuseItem(a.item.image, a.statements) for a in analyses]
    try:
        replies = fuser.fuse(items)
        if len(replies) != len(items):
            raise EveError(f"the fuser returned {len(replies)} replies for {len(items)} images")
    except Exception as exc:  # noqa: BLE001 -- the whole call failed: every item falls back
        replies = [exc] * len(items)
    records = []
    for a, item, reply in zip(analyses, items, replies):
        caption, failure = reply.strip() if isinstance(reply, str) else "", None
        if not caption:
            failure = f"{type(reply).__name__}: {reply}" if isinstance(reply, Exception) else "empty caption"
            caption = rule.fuse([item])[0] if fuser is not rule else ""
        if not caption:
            records.append(error_record(a.item, f"no caption: {failure}"))
            continue
        record = {"id": a.item.id, "image": os.path.relpath(a.item.image, out_dir),
                  "conversations": [{"from": "human", "value": IMAGE_MARKER}, {"from": "gpt", "value": caption}],
                  "status": "partial" if a.errors or failure else "ok",
                  "fuser": rule.name if failure else fuser.name,
                  "prompt_version": None if failure or fuser.prompt is None else
                  f"{fuser.prompt.version}@{fuser.prompt.sha}",
                  "fallback": failure is not None,
                  "experts": a.experts,
                  "expert_errors": a.errors}
        if failure:
            record["fuser_error"] = f"{fuser.name}: {failure}"
        records.append(record)
    return records


def pending_items(inputs: list[str], shard: tuple[int, int], done: set, counts: dict | None = None) -> Iterator[Item]:
    """The input items of this shard not written yet, each id once."""
    seen = set()
    for item in iter_inputs(inputs):
        if not in_shard(item.id, shard):
            continue
        if item.id in done:
            key = "skipped"
        elif item.id in seen:
            key = "duplicates"
        else:
            seen.add(item.id)
            yield item
            continue
        if counts is not None:
            counts[key] += 1


def batches(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class Run:
    """One run's output files (captions + errors), its counts and progress bar; both modes (this
    process, Ray) write their results through it."""

    def __init__(self, output: str, progress: bool = True):
        self.output, self.progress = output, progress
        self.out_dir = os.path.dirname(os.path.abspath(output))
        self.counts = collections.Counter(captioned=0, partial=0, fallback=0, errors=0, skipped=0, duplicates=0)
        self.captions = JsonlWriter(output)
        try:
            self.errors = JsonlWriter(errors_path(output))
        except EveError:
            self.captions.close()
            raise
        self.bar, self.start = None, time.perf_counter()

    def pending(self, inputs: list[str], shard: tuple[int, int] = (0, 1), retry_errors: bool = False,
                limit: int | None = None) -> Iterator[Item]:
        """The items still to caption; starts the progress bar (after a counting pass)."""
        if not (0 <= shard[0] < shard[1]):
            raise EveError(f"bad shard {shard[0]}/{shard[1]}: want K/N with 0 <= K < N")
        done = written_ids(self.output) | (set() if retry_errors else written_ids(self.errors.path))
        total = sum(1 for _ in pending_items(inputs, shard, done))
        self.bar = tqdm(total=total if limit is None else min(total, limit), unit="img", desc="eve caption",
                        disable=not self.progress)
        self.start = time.perf_counter()
        items = pending_items(inputs, shard, done, self.counts)
        return items if limit is None else (item for _, item in zip(range(limit), items))

    def announce(self, experts: list) -> None:
        """The work ahead, from the experts' declared costs."""
        cost = sum(e.cost for e in experts)
        seconds = cost * self.bar.total
        work = f"{seconds / 3600:.1f} core-hours" if seconds >= 3600 else f"{seconds:.0f} core-seconds"
        self.bar.write(f"{self.bar.total} images to caption; the experts declare {cost:.3f} s/image on one core: "
                       f"~{work} before the fuser", file=sys.stderr)

    def write(self, result: dict) -> None:
        if result["status"] == "error":
            self.errors.write(result)
            self.counts["errors"] += 1
        else:
            self.captions.write(result)
            self.counts["captioned"] += 1
            self.counts["partial"] += result["status"] == "partial"
            self.counts["fallback"] += result["fallback"]
        self.bar.update()
        self.bar.set_postfix(errors=self.counts["errors"], fallback=self.counts["fallback"], refresh=False)

    def sync(self) -> None:
        self.captions.sync()
        self.errors.sync()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
        self.captions.close()
        self.errors.close()
        self.counts["seconds"] = round(time.perf_counter() - self.start, 2)


def check_experts(experts: list) -> None:
    if not experts:
        raise EveError("no experts: give at least one (e.g. --experts layout,ocr)")
    names = [e.name for e in experts]
    if len(set(names)) != len(names):
        raise EveError(f"two experts share a name: {names}; rename one with alias=spec")


def run(inputs: list[str], output: str, experts: list, fuser=None, batch_size: int = 16, workers: int = 1,
        concurrency: int = 8, shard: tuple[int, int] = (0, 1), retry_errors: bool = False,
        limit: int | None = None, progress: bool = True) -> dict:
    """Caption every input image of this shard not in `output` yet, in this process. Returns counts."""
    check_experts(experts)
    rule = RuleFuser()
    fuser = fuser or rule
    concurrency = max(1, min(concurrency, fuser.max_concurrency or concurrency))
    with Run(output, progress) as sink:
        source = batches(sink.pending(inputs, shard, retry_errors, limit), batch_size)
        if progress:
            sink.announce(experts)
        analyzing, fusing, ready, exhausted = set(), set(), collections.deque(), False
        with concurrent.futures.ThreadPoolExecutor(workers) as expert_pool, \
                concurrent.futures.ThreadPoolExecutor(concurrency) as fuse_pool:
            while True:
                # The experts run ahead of the fuser by a bounded amount (backpressure).
                while not exhausted and len(analyzing) < workers and len(ready) < fuser.batch_size * concurrency * 2:
                    batch = next(source, None)
                    if batch is None:
                        exhausted = True
                    else:
                        analyzing.add(expert_pool.submit(analyze, batch, experts))
                while ready and len(fusing) < concurrency and (
                        len(ready) >= fuser.batch_size or (exhausted and not analyzing)):
                    chunk = [ready.popleft() for _ in range(min(fuser.batch_size, len(ready)))]
                    fusing.add(fuse_pool.submit(fuse, chunk, fuser, sink.out_dir, rule))
                if not analyzing and not fusing:
                    break
                finished, _ = concurrent.futures.wait(analyzing | fusing,
                                                      return_when=concurrent.futures.FIRST_COMPLETED)
                for future in finished:
                    analyzing.discard(future)
                    fusing.discard(future)
                    for result in future.result():
                        if isinstance(result, Analysis):
                            ready.append(result)
                        else:
                            sink.write(result)
                sink.sync()
    return dict(sink.counts)
