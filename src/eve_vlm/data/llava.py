"""LLaVA-format data: JSONL or JSON-array files of `{"id", "image", "conversations"}` records.

Files are streamed: the dataset never holds the whole file, only a byte-offset index (12 bytes per
record) for random access. Each record is decoded and checked on its own, so one broken line costs
one sample, not the run.
JSONL is the recommended format: a broken JSON array element can make the rest of the array
unreadable, while a broken JSONL line never affects its neighbours.
"""

import json
import os
import re
from array import array
from collections.abc import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from eve_vlm.data.bad import bad_event
from eve_vlm.errors import BadSampleError, ImageTooLargeError
from eve_vlm.processing import image as processing_image
from eve_vlm.processing.chat import normalize_messages

CHUNK = 1 << 20


def is_json_array(path: str) -> bool:
    """Sniff the first non-blank byte: "[" means a JSON array, anything else JSONL."""
    with open(path, "rb") as f:
        while chunk := f.read(4096):
            if stripped := chunk.lstrip():
                return stripped[:1] == b"["
    return False


def scan(path: str) -> Iterator[tuple[int, bytes]]:
    """(byte offset, raw bytes) of every record of a JSONL file or JSON array, in file order."""
    return _scan_array(path) if is_json_array(path) else _scan_jsonl(path)


def _scan_jsonl(path: str) -> Iterator[tuple[int, bytes]]:
    offset = 0
    with open(path, "rb") as f:
        for line in f:
            if stripped := line.strip():
                yield offset + len(line) - len(line.lstrip()), stripped
            offset += len(line)


# A complete string (escapes included), or one structural byte. A lone '"' is a string cut by the
# end of the buffer. Working on bytes is safe: UTF-8 multi-byte sequences never contain ASCII.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|["\[\]{},]', re.S)


def _scan_array(path: str) -> Iterator[tuple[int, bytes]]:
    """Elements of a top-level JSON array, found by tracking bracket depth outside strings."""
    with open(path, "rb") as f:
        buf, base, pos, depth, start, eof = b"", 0, 0, 0, 0, False
        while True:
            for m in _TOKEN.finditer(buf, pos):
                tok = m.group()
                if tok == b'"' and not eof:
                    break  # unterminated string: read more and rescan from here
                pos = m.end()
                if tok in (b"[", b"{"):
                    depth += 1
                    if depth == 1:
                        start = pos
                elif tok in (b"]", b"}") or (tok == b"," and depth == 1):
                    if depth == 1:
                        element = buf[start:m.start()]
                        if stripped := element.strip():
                            yield base + start + len(element) - len(element.lstrip()), stripped
                        start = pos
                    if tok != b",":
                        depth -= 1
                    if depth == 0:
                        return
            if eof:
                raise ValueError(f"{path}: the JSON array is not closed (truncated file?); "
                                 f"records up to byte {base + pos} were read")
            # keep only the unfinished element; everything before it was yielded
            keep = start if depth >= 1 else pos
            buf, base, pos, start = buf[keep:], base + keep, pos - keep, start - keep
            chunk = f.read(CHUNK)
            eof = not chunk
            buf += chunk


def parse_record(raw: bytes, image_root: str | None, where: str) -> dict:
    """Decode one record and check it (the conversation rules of `normalize_messages`). Returns the
    record with `id` set (defaults to `where`), `messages` (the normalized conversation) and
    `images`: the list of image paths resolved against `image_root`."""
    text = raw.decode("utf-8")  # UnicodeDecodeError -> not_utf8, counted by the caller
    record = json.loads(text)
    if not isinstance(record, dict):
        raise BadSampleError("json_malformed", f"record is a {type(record).__name__}, not an object", where)
    sample_id = where if record.get("id") is None else str(record["id"])
    record["id"] = sample_id
    if record.get("conversations") is None:
        raise BadSampleError("conversations_missing", "no 'conversations' field", sample_id)
    image = record.get("image")
    paths = [] if image is None else [image] if isinstance(image, str) else image
    if not (isinstance(paths, list) and all(isinstance(p, str) and p for p in paths)):
        raise BadSampleError("conversations_malformed", f"'image' must be a path or a list of paths, got {image!r}", sample_id)
    record["messages"] = normalize_messages(record["conversations"], sample_id, num_images=len(paths), needs_reply=True)
    record["images"] = [os.path.join(image_root, p) if image_root else p for p in paths]
    return record


def load_image(path: str, sample_id: str | None = None, max_pixels: int = 64_000_000,
               max_bytes: int = 64 << 20) -> Image.Image:
    """The processor's image loader (same RGB conversion as at inference), with every failure a
    BadSampleError naming the sample, and a missing file told apart from an unreadable one:
    many `image_missing` skips usually mean a wrong image_root."""
    if not os.path.isfile(path):
        raise BadSampleError("image_missing", f"no image file {path}", sample_id)
    try:
        return processing_image.load_image(path, max_pixels, max_bytes)
    except ImageTooLargeError as exc:
        raise BadSampleError("image_too_large", str(exc), sample_id) from None
    except BadSampleError as exc:
        raise BadSampleError(exc.reason, str(exc).removeprefix(f"{exc.reason}: "), sample_id) from None
    except (OSError, SyntaxError, ValueError) as exc:  # what PIL raises for corrupt pixel data
        raise BadSampleError("image_unreadable", f"{path}: {type(exc).__name__}: {exc}", sample_id) from None


class LlavaEncoder:
    """Record -> model sample: loads the images and runs the processor (tokens, labels, pixels)."""

    def __init__(self, processor, template: str | None = None, max_length: int | None = None,
                 max_pixels: int = 64_000_000, max_bytes: int = 64 << 20, turns: str = "joint"):
        self.processor, self.template, self.max_length = processor, template, max_length
        self.max_pixels, self.max_bytes, self.turns = max_pixels, max_bytes, turns

    def __call__(self, record: dict) -> dict:
        sample_id = record["id"]
        images = [load_image(p, sample_id, self.max_pixels, self.max_bytes) for p in record["images"]]
        out = self.processor.encode_conversation(
            record["messages"], images, template=self.template, sample_id=sample_id,
            max_length=self.max_length, turns=self.turns)
        if not all((r["labels"] != -100).any() for r in out.get("rows", [out])):
            raise BadSampleError("no_supervised_tokens", "every label is masked after encoding", sample_id)
        out["id"] = sample_id
        return out


def text_length(record: dict, image_tokens: int = 625) -> int:
    """LLaVA's cheap length proxy: words plus a fixed cost per image; negative for text-only
    records so a length-grouped sampler can keep the two modalities apart."""
    words = sum(len(m["content"].split()) for m in record["messages"])
    n = len(record["images"])
    return words + image_tokens * n if n else -max(words, 1)


class LlavaDataset(torch.utils.data.Dataset):
    """Random access over a JSONL / JSON-array file through a byte-offset index built by one scan.
    `dataset[i]` raises BadSampleError (or a decode error) for a bad record; wrap it in `SkipBad`
    for training."""

    def __init__(self, path: str, image_root: str | None = None, transform: Callable | None = None):
        self.path, self.image_root, self.transform = path, image_root, transform
        self.name = os.path.basename(path)
        offsets, sizes = array("q"), array("i")  # 12 bytes a record; Python ints would take ~70
        for offset, raw in scan(path):
            offsets.append(offset)
            sizes.append(len(raw))
        self.offsets = np.frombuffer(offsets, dtype=np.int64)
        self.sizes = np.frombuffer(sizes, dtype=np.int32)
        self._file = None

    def __len__(self) -> int:
        return len(self.offsets)

    def __getstate__(self):  # open file handles do not cross into DataLoader worker processes
        return {**self.__dict__, "_file": None}

    def where(self, i: int) -> str:
        return f"{self.name}#{i}"

    def raw(self, i: int) -> bytes:
        if self._file is None:
            self._file = open(self.path, "rb")
        # pread, not seek + read: forked DataLoader workers share the file offset of a handle
        # the parent opened (e.g. for lengths()), and would read each other's records
        return os.pread(self._file.fileno(), int(self.sizes[i]), int(self.offsets[i]))

    def record(self, i: int) -> dict:
        return parse_record(self.raw(i), self.image_root, self.where(i))

    def __getitem__(self, i: int) -> dict:
        record = self.record(i)
        return self.transform(record) if self.transform else record

    def lengths(self, image_tokens: int = 625) -> np.ndarray:
        """Signed length proxies (see `text_length`) of every record, for LengthGroupedSampler.
        Unparseable records get -1 (short text); they are skipped when sampled anyway."""
        out = np.empty(len(self), dtype=np.int64)
        for i in range(len(self)):
            try:
                out[i] = text_length(self.record(i), image_tokens)
            except Exception as exc:
                if bad_event(exc) is None:
                    raise
                out[i] = -1
        return out
