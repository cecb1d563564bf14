"""Bad-sample accounting: skip unusable records, count them by reason, stop when too many are bad.

Web-scale data always holds some broken records; one of them must never kill a run, but a run where
a third of the data is silently skipped (a wrong image root, a template bug) must stop early with
a message that says why.
"""

import json
import random
from collections import Counter
from dataclasses import dataclass

import torch
from PIL import Image

from eve_vlm.errors import BadSampleError, EveError

REASONS = (
    "json_malformed", "not_utf8", "conversations_missing", "conversations_empty",
    "conversations_malformed", "image_missing", "image_unreadable", "image_too_large",
    "placeholder_mismatch", "too_long", "no_supervised_tokens",
)


class TooManyBadSamplesError(EveError):
    """The fraction of skipped samples went above the configured maximum."""


@dataclass(frozen=True)
class BadEvent:
    reason: str
    sample_id: str | None
    message: str


def bad_event(exc: BaseException, sample_id: str | None = None) -> BadEvent | None:
    """The BadEvent for an exception that marks one record as unusable; None for anything else
    (a bug must still crash)."""
    if isinstance(exc, BadSampleError):
        return BadEvent(exc.reason, exc.sample_id or sample_id, str(exc))
    if isinstance(exc, UnicodeDecodeError):
        reason = "not_utf8"
    elif isinstance(exc, json.JSONDecodeError):
        reason = "json_malformed"
    elif isinstance(exc, FileNotFoundError):
        reason = "image_missing"
    elif isinstance(exc, Image.DecompressionBombError):
        reason = "image_too_large"
    elif isinstance(exc, (OSError, SyntaxError)):  # PIL reports corrupt files with both
        reason = "image_unreadable"
    else:
        return None
    return BadEvent(reason, sample_id, f"{reason}: {type(exc).__name__}: {exc}")


class BadSampleCounter:
    """Counts good and bad samples; keeps a few examples per reason; enforces a max bad fraction.

    The check only starts once `min_seen` samples were seen, so a few bad records at the start of
    a shard do not stop a run.
    """

    def __init__(self, max_bad_fraction: float = 0.05, min_seen: int = 1000, max_examples: int = 5):
        self.max_bad_fraction = max_bad_fraction
        self.min_seen = min_seen
        self.max_examples = max_examples
        self.good = 0
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[tuple[str | None, str]]] = {}

    @property
    def bad(self) -> int:
        return sum(self.counts.values())

    @property
    def seen(self) -> int:
        return self.good + self.bad

    def add_good(self, n: int = 1) -> None:
        self.good += n
        self.check()

    def add_bad(self, event: BadEvent) -> None:
        self._record(event)
        self.check()

    def update(self, batch: dict, check: bool = True) -> None:
        """Count one collated batch (its `meta` holds the samples used and the skips before
        them); checked once per batch, so the order inside a batch does not matter. Distributed
        training checks the totals of all ranks instead (`check(bad, seen)`), so that every rank
        stops at the same step rather than one rank leaving the others in a collective."""
        meta = batch["meta"]
        for event in meta["skipped"]:
            self._record(event)
        self.good += len(meta["ids"])
        if check:
            self.check()

    def _record(self, event: BadEvent) -> None:
        self.counts[event.reason] += 1
        examples = self.examples.setdefault(event.reason, [])
        if len(examples) < self.max_examples:
            examples.append((event.sample_id, event.message))

    def check(self, bad: int | None = None, seen: int | None = None) -> None:
        """Raise when the bad fraction is too high: of this counter, or of the given totals."""
        bad, seen = (self.bad, self.seen) if bad is None else (bad, seen)
        if seen < self.min_seen or bad <= self.max_bad_fraction * seen:
            return
        top = ", ".join(f"{r} {n}" for r, n in self.counts.most_common(3))
        raise TooManyBadSamplesError(
            f"{bad} of {seen} samples ({bad / seen:.1%}) were bad, above the "
            f"maximum {self.max_bad_fraction:.1%} (max_bad_fraction). Most common: {top}. "
            f"Example: {self._first_example()}. Check the data paths and image roots, or raise "
            f"max_bad_fraction if this data is known to be this dirty.")

    def _first_example(self) -> str:
        reason = self.counts.most_common(1)[0][0]
        sample_id, message = self.examples[reason][0]
        return message if sample_id is None or sample_id in message else f"{message} ({sample_id})"

    def metrics(self) -> dict[str, float]:
        """Flat numbers for metrics.jsonl / TensorBoard."""
        out = {"bad/seen": self.seen, "bad/skipped": self.bad,
               "bad/fraction": self.bad / self.seen if self.seen else 0.0}
        out.update({f"bad/{reason}": n for reason, n in sorted(self.counts.items())})
        return out

    def report(self) -> dict:
        """Everything, JSON-serialisable, for the run folder's bad-sample report."""
        return {"seen": self.seen, "good": self.good, "bad": self.bad,
                "max_bad_fraction": self.max_bad_fraction, "counts": dict(self.counts),
                "examples": {r: [list(e) for e in ex] for r, ex in self.examples.items()}}

    def table(self) -> str:
        rows = [f"{'reason':<24} {'count':>8} {'share':>7}  example"]
        for reason, n in self.counts.most_common():
            sample_id, message = self.examples[reason][0]
            rows.append(f"{reason:<24} {n:>8} {n / self.seen:>7.2%}  {message[:100]}")
        rows.append(f"{'total bad':<24} {self.bad:>8} {self.bad / max(self.seen, 1):>7.2%}  "
                    f"of {self.seen} samples seen")
        return "\n".join(rows)

    def state_dict(self) -> dict:
        """Counts survive a resume; the limits come from the (possibly changed) config."""
        report = self.report()
        return {k: report[k] for k in ("good", "counts", "examples")}

    def load_state_dict(self, state: dict) -> None:
        self.good = state["good"]
        self.counts = Counter(state["counts"])
        self.examples = {r: [tuple(e) for e in ex] for r, ex in state["examples"].items()}


class SkipBad(torch.utils.data.Dataset):
    """Map-style wrapper: a bad index is replaced by another, pseudo-random but deterministic one,
    so batches keep their size (no rank of a distributed run ever gets an empty batch) and resume
    stays exact. The skips ride along in `sample["skipped"]`."""

    def __init__(self, dataset, max_tries: int = 100, seed: int = 0):
        self.dataset, self.max_tries, self.seed = dataset, max_tries, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        skipped, j = [], i
        for attempt in range(self.max_tries):
            try:
                sample = self.dataset[j]
            except Exception as exc:
                where = self.dataset.where(j) if hasattr(self.dataset, "where") else str(j)
                event = bad_event(exc, where)
                if event is None:
                    raise
                skipped.append(event)
                j = random.Random(f"{self.seed}:{i}:{attempt}").randrange(len(self))
                continue
            sample["skipped"] = skipped
            return sample
        raise TooManyBadSamplesError(
            f"{self.max_tries} samples in a row were bad, starting at index {i}: "
            + "; ".join(e.message for e in skipped[:3]))
