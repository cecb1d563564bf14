"""Evaluation tasks as data: a YAML file says where the records come from, how to prompt, how to
clean the reply and which metrics score it. Built-in task files live in `eval/tasks/`; a user
file is given by path. See docs/evaluation.md for the format.

Every source yields records of one shape:
    {"id", "image" (path), "question", "answers": [str], "choices": [str] (MCQ), "answer" (MCQ gold),
     "question_type", "error" (set when the line itself is unusable)}
"""

import dataclasses
import json
import os

import yaml

from ..errors import EveError
from ..processing.chat import IMAGE_MARKER, normalize_messages
from .metrics import LETTERS, METRICS

TASK_DIR = os.path.join(os.path.dirname(__file__), "tasks")
POSTPROCESS = {"first_line": lambda s: s.strip().split("\n")[0], "lower": str.lower}


@dataclasses.dataclass
class Task:
    name: str
    source: dict
    prompt: str
    metrics: list[str]
    postprocess: list[str] = dataclasses.field(default_factory=list)
    group_by: str | None = "question_type"
    max_new_tokens: int = 32
    description: str = ""
    base_dir: str = "."  # relative paths in `source` are resolved against the task file's folder

    def __post_init__(self):
        self.metrics, self.postprocess = _as_list(self.metrics), _as_list(self.postprocess)
        unknown = [m for m in self.metrics if m not in METRICS] + [p for p in self.postprocess if p not in POSTPROCESS]
        if unknown or not self.metrics:
            raise EveError(f"task {self.name}: unknown or missing metric / postprocess step {unknown}; "
                           f"metrics: {sorted(METRICS)}, postprocess: {sorted(POSTPROCESS)}")

    @classmethod
    def load(cls, name_or_path: str, data: str | None = None, image_root: str | None = None) -> "Task":
        """A built-in task name or a task file path. `data` / `image_root` replace the JSONL of a task
        that reads one (not the data of a builder task)."""
        path = name_or_path if os.path.isfile(name_or_path) else os.path.join(TASK_DIR, f"{name_or_path}.yaml")
        if not os.path.isfile(path):
            raise EveError(f"no task {name_or_path!r}: not a file and not one of {builtin_tasks()}")
        with open(path) as f:
            spec = yaml.safe_load(f) or {}
        spec.setdefault("name", os.path.splitext(os.path.basename(path))[0])
        if data is not None and "jsonl" in (spec.get("source") or {}):
            spec["source"] = {"jsonl": os.path.abspath(data), "image_root": image_root and os.path.abspath(image_root)}
        fields = {f.name for f in dataclasses.fields(cls)} - {"base_dir"}
        if not {"source", "prompt", "metrics"} <= set(spec) or set(spec) - fields:
            raise EveError(f"{path}: a task needs `source`, `prompt` and `metrics` and knows only {sorted(fields)}")
        return cls(**spec, base_dir=os.path.dirname(os.path.abspath(path)))

    def records(self, cache_dir: str) -> list[dict]:
        """All records, in a fixed order. Builder sources are generated into `cache_dir` once."""
        src = dict(self.source)
        if "builder" in src:
            jsonl, image_root = _build(src.pop("builder"), src, cache_dir)
        elif src.get("jsonl"):
            jsonl = os.path.join(self.base_dir, src["jsonl"])
            image_root = os.path.join(self.base_dir, src.get("image_root") or os.path.dirname(jsonl))
        else:
            raise EveError(f"task {self.name} reads a user JSONL: give it with --data FILE [--image-root DIR]")
        if not os.path.isfile(jsonl):
            raise EveError(f"task {self.name}: no such file {jsonl}")
        with open(jsonl) as f:
            records = [_record(line, n, image_root) for n, line in enumerate(f) if line.strip()]
        seen = set()
        for r in records:  # resuming matches predictions to records by id
            if r["id"] in seen:
                raise EveError(f"{jsonl}: id {r['id']!r} appears more than once; ids must be unique")
            seen.add(r["id"])
        return records

    def build_prompt(self, record: dict) -> str:
        options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(record.get("choices") or []))
        return self.prompt.format_map({**record, "options": options})

    def clean(self, reply: str) -> str:
        for step in self.postprocess:
            reply = POSTPROCESS[step](reply)
        return reply.strip()


def _as_list(value) -> list:
    return [value] if isinstance(value, str) else list(value or [])  # "metrics: anls" means [anls]


def builtin_tasks() -> list[str]:
    return sorted(f[:-5] for f in os.listdir(TASK_DIR) if f.endswith(".yaml"))


def _build(builder: str, args: dict, cache_dir: str) -> tuple[str, str]:
    """Generate a builder's data set once under `cache_dir`; return (jsonl, image root)."""
    if builder == "easyvqa":
        split = args.get("split", "test")
        out = os.path.join(cache_dir, f"easyvqa-{split}")
        jsonl, image_root = os.path.join(out, f"{split}_qa.jsonl"), os.path.join(out, split, "images")
    elif builder == "textimage":
        num, seed = int(args.get("num", 500)), int(args.get("seed", 1))
        out = os.path.join(cache_dir, f"textimage-{num}-{seed}")
        jsonl, image_root = os.path.join(out, "qa.jsonl"), os.path.join(out, "images")
    else:
        raise EveError(f"unknown builder {builder!r}; choose from ['easyvqa', 'textimage']")
    done = os.path.join(out, ".complete")  # an interrupted export is redone, never half-read
    if not os.path.exists(done):
        if builder == "easyvqa":
            from ..data.easyvqa import export_easyvqa

            # One question per record, without the short-answer hint: the task's prompt adds it.
            export_easyvqa(out, splits=(split,), questions_per_record=1, hint="")
        else:
            from ..data.textimage import generate

            generate(out, num, seed)
        open(done, "w").close()
    return jsonl, image_root


def _record(line: str, n: int, image_root: str) -> dict:
    """One JSONL line -> a record. Takes our flat form (question / answer(s) / choices) or a LLaVA
    record (first human turn = question, first gpt turn = answer); a bad line becomes an error record."""
    rid = f"line-{n + 1}"
    try:
        raw = json.loads(line)
        rid = str(raw.get("id", raw.get("question_id", rid)))
        messages = normalize_messages(raw["conversations"], rid, alternate=True) if raw.get("conversations") else []
        question = raw.get("question") or next(m["content"] for m in messages if m["role"] == "user")
        reply = next((m["content"] for m in messages if m["role"] == "assistant"), None)
        answers = raw.get("answers") or [raw.get("answer", reply)]
        image = raw["image"][0] if isinstance(raw.get("image"), list) and len(raw["image"]) == 1 else raw["image"]
        if not isinstance(image, str):
            raise ValueError(f"one image path expected, got {image!r}")
        qtype = raw.get("question_type", raw.get("category"))
        return {
            "id": rid,
            "image": os.path.join(image_root, image),
            "question": question.replace(IMAGE_MARKER, "").strip(),
            "answers": [str(a) for a in answers if a is not None],
            "choices": raw.get("choices") or raw.get("options"),
            "answer": raw.get("answer"),
            "question_type": qtype if isinstance(qtype, str) else None,
        }
    except (ValueError, KeyError, TypeError, AttributeError, StopIteration) as exc:
        reason = "no question" if isinstance(exc, StopIteration) else f"{type(exc).__name__}: {exc}"
        return {"id": rid, "error": f"bad record: {reason}", "answers": []}
