"""Fusers: the experts' statements about an image (+ the image) -> one caption.

- `RuleFuser` joins the statements: faithful by construction, the floor and the fallback.
- `PredictorFuser` renders a prompt template with the statements and asks a captioner: an eve
  model folder run in this process, or any OpenAI-compatible endpoint (`eve serve`, vLLM, SGLang),
  through the same predictors `eve eval` uses.

A fuser has `name` (recorded), `prompt` (a PromptTemplate, or None), `batch_size` (items per
`fuse` call), `max_concurrency` (calls in flight at most; None = as many as the engine allows) and
`fuse(items)`, which returns one entry per item: the caption, or the exception that item raised;
the engine replaces failures with the rule caption and marks the record.
"""

import dataclasses
import hashlib
import os
from pathlib import Path

from ..errors import EveError

PROMPTS = Path(__file__).parent / "prompts"
DEFAULT_PROMPT = "fuse-v1"


@dataclasses.dataclass(frozen=True)
class FuseItem:
    image: str  # path of the image file
    statements: list[tuple[str, str]]  # (expert name, sentence), in expert order


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    """A fusion prompt: a text file with a `{facts}` slot. `version` is the file's stem (the
    built-in ones are named `fuse-vN.txt` and never edited, only added); `sha` tells apart
    edited copies that kept a name."""

    version: str
    text: str

    @classmethod
    def load(cls, name_or_path: str = DEFAULT_PROMPT) -> "PromptTemplate":
        path = Path(name_or_path)
        if not path.is_file():
            path = PROMPTS / f"{name_or_path}.txt"
        if not path.is_file():
            known = sorted(p.stem for p in PROMPTS.glob("*.txt"))
            raise EveError(f"prompt {name_or_path!r}: no such file, and not a built-in prompt {known}")
        text = path.read_text(encoding="utf-8")
        if "{facts}" not in text:
            raise EveError(f"prompt {path}: the template has no {{facts}} slot for the experts' findings")
        return cls(path.stem, text)

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:12]

    def render(self, statements: list[tuple[str, str]]) -> str:
        facts = "\n".join(f"- {name}: {sentence}" for name, sentence in statements) or "- (none)"
        return self.text.replace("{facts}", facts).strip()


class RuleFuser:
    name = "rule"
    prompt = None
    batch_size = 1  # instant: nothing to gain from waiting for more
    max_concurrency = 1

    def fuse(self, items: list[FuseItem]) -> list:
        return [" ".join(sentence for _, sentence in item.statements) for item in items]


class PredictorFuser:
    """A captioner behind an `eve_vlm.infer.predictors` predictor: `predict([(text, image path)],
    max_new_tokens)` -> one reply or exception per item."""

    def __init__(self, predictor, name: str, prompt: PromptTemplate, max_new_tokens: int, batch_size: int,
                 max_concurrency: int | None):
        self.predictor, self.name, self.prompt = predictor, name, prompt
        self.max_new_tokens, self.batch_size, self.max_concurrency = max_new_tokens, batch_size, max_concurrency

    def fuse(self, items: list[FuseItem]) -> list:
        return self.predictor.predict([(self.prompt.render(i.statements), i.image) for i in items],
                                      self.max_new_tokens)


def load_fuser(spec: str = "rule", prompt: str = DEFAULT_PROMPT, max_new_tokens: int = 256, batch_size: int = 8,
               dtype: str | None = None, device: str | None = None, api_key: str | None = None,
               endpoint_model: str | None = None, timeout: float = 120):
    """"rule", a saved eve model folder (run here, batched, one batch at a time), or the URL of an
    OpenAI-compatible server (one request per image; the engine bounds how many are in flight)."""
    from ..infer.predictors import DirectPredictor, EndpointPredictor

    if spec == "rule":
        return RuleFuser()
    template = PromptTemplate.load(prompt)
    if spec.startswith(("http://", "https://")):
        predictor = EndpointPredictor(spec, api_key=api_key, model=endpoint_model, timeout=timeout)
        return PredictorFuser(predictor, f"endpoint:{predictor.name}", template, max_new_tokens, 1, None)
    if os.path.isdir(spec):
        predictor = DirectPredictor(spec, dtype=dtype, device=device)
        return PredictorFuser(predictor, f"model:{predictor.name}", template, max_new_tokens, batch_size, 1)
    raise EveError(f"--fuser {spec!r}: give 'rule', a model folder, or an http(s):// endpoint URL")
