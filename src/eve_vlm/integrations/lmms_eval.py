"""lmms-eval model adapter: `lmms-eval --model eve --model_args pretrained=DIR[,dtype=bf16] --tasks ...`.

A "simple" lmms-eval model (it receives the task's prompt text and its images, not structured
messages). Each prompt becomes one user turn: the images first, then the text, rendered with
the folder's chat template, exactly as `eve eval` and `eve serve` prompt. lmms-eval finds the
class through the `lmms_eval.models` entry point (`eve_vlm.integrations:lmms_eval_manifest`).
"""

import logging

from lmms_eval.api.instance import GenerationResult
from lmms_eval.api.model import lmms

from ..infer import GenerationOptions, encode, generate, load
from ..processing.chat import IMAGE_MARKER, image_part, text_part

logger = logging.getLogger(__name__)


class EveLmms(lmms):
    is_simple = True

    def __init__(self, pretrained: str, device: str | None = None, dtype: str | None = None, batch_size=1,
                 max_new_tokens: int = 128, **_ignored):
        # `_ignored`: lmms-eval passes its generic options (max_batch_size, ...) to every model.
        super().__init__()
        self.model, self.processor = load(pretrained, dtype=dtype, device=device)
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)  # when the task's gen_kwargs set none (the official VQA loader's 128)

    def _messages(self, context: str, visuals: list) -> list[dict]:
        if context.count(IMAGE_MARKER) == len(visuals):  # the task placed its images itself
            return [{"role": "user", "content": context}]
        return [{"role": "user", "content": [image_part()] * len(visuals) + [text_part(context)]}]

    def _visuals(self, doc_to_visual, doc_id, task, split) -> list:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual else []
        return [v for v in (visuals or []) if v is not None]

    def _options(self, gen_kwargs: dict) -> GenerationOptions:
        until = gen_kwargs.get("until") or []
        sampling = gen_kwargs.get("do_sample", False) and (gen_kwargs.get("temperature") or 0) > 0
        return GenerationOptions(
            max_new_tokens=int(gen_kwargs.get("max_new_tokens") or self.max_new_tokens),
            temperature=float(gen_kwargs["temperature"]) if sampling else 0.0,
            top_p=float(gen_kwargs.get("top_p") or 1.0) if sampling else 1.0,
            stop=tuple([until] if isinstance(until, str) else until),
        )

    def generate_until(self, requests) -> list[str]:
        """Greedy (unless the task samples) batched decoding; a request that fails answers ""
        (scored wrong) with a warning instead of stopping the evaluation."""
        replies = [""] * len(requests)
        pending = []  # (index, prompt, options) of requests that encoded
        for i, req in enumerate(requests):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            try:
                visuals = self._visuals(doc_to_visual, doc_id, task, split)
                pending.append((i, encode(self.processor, self._messages(context, visuals), visuals),
                                self._options(dict(gen_kwargs))))
            except Exception as exc:  # noqa: BLE001
                logger.warning("eve: %s/%s answered \"\": %s: %s", task, doc_id, type(exc).__name__, exc)
        # Consecutive requests with the same settings share a batch (a task's requests all do).
        start = 0
        while start < len(pending):
            end = start + 1
            while end < len(pending) and end - start < self.batch_size and pending[end][2] == pending[start][2]:
                end += 1
            chunk = pending[start:end]
            try:
                texts = [c.text for c in generate(self.model, self.processor, [p for _, p, _ in chunk], chunk[0][2])]
            except Exception as exc:  # noqa: BLE001
                logger.warning("eve: generation failed for %d request(s): %s: %s", len(chunk), type(exc).__name__, exc)
                texts = [""] * len(chunk)
            for (i, _, _), text in zip(chunk, texts):
                replies[i] = text
            start = end
        return replies

    def loglikelihood(self, requests) -> list:
        """(loss, greedy) per request: loss = the mean negative log-likelihood of the continuation
        tokens given the prompt, greedy = whether greedy decoding would produce them. The
        continuation is tokenized on its own and appended to the prompt's tokens.

        A loss, not lm-eval's summed log-probability: lmms-eval picks a multiple-choice answer by
        argmin, and its own LLaVA / Fuyu adapters return the mean loss, so scores stay comparable."""
        import torch

        results = []
        for req in requests:
            context, continuation, doc_to_visual, doc_id, task, split = req.args
            doc = self.task_dict[task][split][doc_id]
            visuals = self._visuals(doc_to_visual, doc_id, task, split)
            continuation = continuation if isinstance(continuation, str) else continuation(doc)
            prompt = encode(self.processor, self._messages(context, visuals), visuals)
            target = self.processor.tokenizer(continuation, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt.input_ids + target], device=self.model.device)
            with torch.inference_mode():
                logits = self.model(input_ids=ids, pixel_values=prompt.pixel_values or None).logits[0].float()
            logprobs = logits[len(prompt.input_ids) - 1:-1].log_softmax(-1)
            target_t = torch.tensor(target, device=logprobs.device)
            loss = -logprobs.gather(-1, target_t[:, None]).mean().item()
            greedy = bool((logprobs.argmax(-1) == target_t).all())
            # lmms-eval 0.7.3 turns a bare (float, bool) result into a string; this wrapper passes it through.
            results.append(GenerationResult(text=(loss, greedy)))
        return results

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("eve: multi-round generation is not supported")
