"""`eve infer`: a JSONL file of requests -> a JSONL file of answers, batched with left padding.

Input, one JSON object per line:
    {"id": "q1", "messages": [...]}               OpenAI/HF messages; image parts: {"type": "image",
                                                  "image": PATH} or {"type": "image_url", "image_url": {"url": ...}}
    {"id": "q2", "prompt": "text", "images": [PATH, ...]}
Paths are relative to the input file. A record without "id" gets "line-N" (its line number).
Output, one line per record: {"id", "answer", "finish_reason", "usage"} or {"id", "error"}.

Resumable: ids that already have an answer in the output are skipped and new lines are appended
(records that failed are tried again; the last line of an id wins; a line torn by a killed run is
cut off: see `eve_vlm.jsonl`). A bad record (bad JSON, unreadable image, prompt too long, ...) gets
an error line and the run goes on.
"""

import json
import os

from tqdm import tqdm

from ..errors import EveError
from ..jsonl import JsonlWriter, read_jsonl
from ..processing.chat import IMAGE_MARKER, image_part, text_part
from .engine import GenerationOptions, encode, generate, image_sources


def answered_ids(path) -> set:
    """Ids that have an answer in an existing output file."""
    return {record.get("id") for record in read_jsonl(path) if "answer" in record}


def _messages(record: dict, base: str) -> tuple[list, list]:
    """(messages, images) of one record; relative image paths are resolved against `base`."""
    def resolve(src):
        is_path = isinstance(src, str) and not src.startswith(("data:", "http://", "https://"))
        return os.path.join(base, os.path.expanduser(src)) if is_path else src

    if "messages" in record:
        return record["messages"], [resolve(s) for s in image_sources(record["messages"])]
    prompt, images = record.get("prompt"), record.get("images", [])
    if not isinstance(prompt, str) or not isinstance(images, list):
        raise EveError('a record needs "messages", or "prompt" (a string) and optionally "images" (a list)')
    if IMAGE_MARKER in prompt:  # the images go where the prompt's markers are
        return [{"role": "user", "content": prompt}], [resolve(s) for s in images]
    content = [image_part(s) for s in images] + [text_part(prompt)]
    return [{"role": "user", "content": content}], [resolve(s) for s in images]


def run(model, processor, input_path, output_path, options: GenerationOptions, batch_size: int = 8,
        max_batch_tokens: int | None = None) -> dict:
    """Answer every record of `input_path` not answered yet in `output_path`. Returns counts."""
    if options.batch_key is None:
        batch_size = 1  # seeded sampling is only reproducible alone
    base = os.path.dirname(os.path.abspath(input_path))
    context = model.config.max_position_embeddings
    counts = {"answered": 0, "errors": 0, "skipped": 0}
    with open(input_path, encoding="utf-8") as f:
        total = sum(1 for _ in f)
    with JsonlWriter(output_path) as out, open(input_path, encoding="utf-8") as f, \
            tqdm(total=total, unit="rec", desc="eve infer") as bar:
        done = answered_ids(output_path)

        def write(record: dict) -> None:
            counts["errors" if "error" in record else "answered"] += 1
            out.write(record)
            bar.update()

        def flush(batch: list) -> None:
            for record in _answer(model, processor, batch, options):
                write(record)
            out.sync()
            batch.clear()

        batch = []
        for n, line in enumerate(f, 1):
            rid = f"line-{n}"
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise EveError("a record is a JSON object")
                rid = record.get("id", rid)
                if not isinstance(rid, (str, int)):
                    rid = f"line-{n}"
                    raise EveError("the id must be a string or an integer")
                if rid in done:
                    counts["skipped"] += 1
                    bar.update()
                    continue
                messages, images = _messages(record, base)
                prompt = encode(processor, messages, images)
                if len(prompt.input_ids) + options.max_new_tokens > context:
                    raise EveError(f"too long: {len(prompt.input_ids)} prompt tokens + {options.max_new_tokens} new "
                                   f"> the model's context of {context}")
            except Exception as exc:  # whatever is wrong with one record is reported in its line
                write({"id": rid, "error": f"{type(exc).__name__}: {exc}"})
                continue
            longest = max([len(prompt.input_ids)] + [len(p.input_ids) for _, p in batch])
            if batch and max_batch_tokens and longest * (len(batch) + 1) > max_batch_tokens:
                flush(batch)
            batch.append((rid, prompt))
            if len(batch) >= batch_size:
                flush(batch)
        if batch:
            flush(batch)
    return counts


def _answer(model, processor, batch: list, options: GenerationOptions) -> list[dict]:
    try:
        results = generate(model, processor, [p for _, p in batch], options)
    except Exception as exc:  # e.g. out of memory: retry alone, so only the record at fault fails
        if len(batch) > 1:
            return [r for item in batch for r in _answer(model, processor, [item], options)]
        return [{"id": batch[0][0], "error": f"{type(exc).__name__}: {exc}"}]
    return [{"id": rid, "answer": c.text, "finish_reason": c.finish_reason,
             "usage": {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens}}
            for (rid, _), c in zip(batch, results)]
