"""Dynamic batching: one worker thread owns the model and decodes queued requests together.

The worker waits for a request, takes up to `max_batch_size` waiting requests that share its
sampling settings (`GenerationOptions.batch_key`; oldest first, so nothing starves), left-pads
them and runs one batched `generate`. Streaming and non-streaming requests share batches: the
text of every row is dispatched after each decoding step. A request that arrives during a
batch waits for the next one (dynamic, not continuous batching). At most `max_queue` requests
wait; past that `submit` raises `QueueFull` at once.
"""

import collections
import logging
import threading

from ..infer import GenerationOptions, Prompt, generate

log = logging.getLogger(__name__)


class QueueFull(Exception):
    pass


class Job:
    """A queued request. `emit(kind, value)` receives ("delta", str)..., then ("done", Completion)
    or ("error", Exception); it is called from the worker thread."""

    def __init__(self, prompt: Prompt, options: GenerationOptions, emit):
        self.prompt, self.options, self.emit = prompt, options, emit
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Batcher:
    def __init__(self, model, processor, max_batch_size: int = 8, max_queue: int = 64):
        self.model, self.processor = model, processor
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        self._pending: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self.batches = 0  # started so far (shown by /health)
        self._thread = threading.Thread(target=self._run, name="eve-decoder", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def queued(self) -> int:
        return len(self._pending)

    def submit(self, prompt: Prompt, options: GenerationOptions, emit) -> Job:
        job = Job(prompt, options, emit)
        with self._cond:
            if len(self._pending) >= self.max_queue:
                raise QueueFull(f"{len(self._pending)} requests are waiting (the limit is {self.max_queue})")
            self._pending.append(job)
            self._cond.notify()
        return job

    def close(self) -> None:
        """The worker exits after its current batch."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _take(self) -> list[Job]:
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if self._closed:
                return []
            batch = [self._pending.popleft()]
            key = batch[0].options.batch_key
            if key is not None:
                batch += [j for j in self._pending if j.options.batch_key == key][:self.max_batch_size - 1]
                for job in batch[1:]:
                    self._pending.remove(job)
            return batch

    def _run(self) -> None:
        while batch := self._take():
            batch = [j for j in batch if not j.cancelled]
            if not batch:
                continue
            self.batches += 1
            try:
                done = generate(self.model, self.processor, [j.prompt for j in batch], [j.options for j in batch],
                                on_delta=lambda i, text: self._delta(batch[i], text))
            except Exception as exc:  # the worker must outlive any failure; the clients get the error
                log.exception("generation failed for a batch of %d", len(batch))
                for job in batch:
                    job.emit("error", exc)
                continue
            for job, completion in zip(batch, done):
                job.emit("done", completion)

    @staticmethod
    def _delta(job: Job, text: str) -> bool:
        if text:
            job.emit("delta", text)
        return not job.cancelled

