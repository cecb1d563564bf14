"""Analytic FLOPs of a training step, from the model config and the batches actually processed.

Counted (2 FLOPs per multiply-add), forward:
  linear     per token and decoder layer: q, k, v, o and the SwiGLU gate / up / down projections
  attention  QK^T and the weighted sum over V, 4 * heads * head_dim per (query, key) pair, over the
             CAUSAL pairs of each sample: n(n+1)/2 for a sample of n tokens (packed samples attend
             within themselves only). A kernel that computes the full masked square does up to 2x
             that; the surplus is counted nowhere (it is the kernel's, not the model's).
  lm_head    only at the positions the trainer computes logits for (the supervised ones)
  pel        conv 16x16/16 (3 -> pel_hidden) and conv 2x2/2 (pel_hidden -> hidden), per image
Not counted: norms, RoPE, activations, residuals, softmax, embedding lookups, routing gathers,
the loss (elementwise, ~1 % of the matmuls at these widths).

Backward, per matmul: its forward again for the weight gradient if the weight trains, and again
for the input gradient if anything upstream needs one (tensor-level, as autograd decides it):
2x for trainable weights, 1x for frozen ones that only pass gradients on (stage 1's whole LLM),
0 where nothing upstream trains (the first conv's input is pixels: weight gradient only). The
attention core has no weights: 2x whenever q/k/v need gradients. A batch whose loss reaches no
trainable weight (text only, LLM frozen) has no backward; neither does activation checkpointing's
recomputation count (MFU, not hardware FLOPs).

Padding tokens (right padding, or a packed row's tail) go through every linear layer too; that
compute is wasted and kept apart in `StepFlops.padding`; MFU counts `useful` only.
"""

from dataclasses import dataclass, field

import torch

from ..model.prefix import GroupedPrefix, batch_shared_length, group_prefixes
from ..processing.chat import IGNORE_INDEX

TERMS = ("linear", "attention", "lm_head", "pel")


@dataclass
class StepFlops:
    useful: float = 0.0  # forward + backward FLOPs of the real tokens
    padding: float = 0.0  # forward + backward FLOPs spent on padding tokens
    parts: dict = field(default_factory=lambda: dict.fromkeys(TERMS, 0.0))  # `useful` by term
    padding_attention: float = 0.0  # the attention core's share of `padding`

    def __add__(self, other: "StepFlops") -> "StepFlops":
        return StepFlops(self.useful + other.useful, self.padding + other.padding,
                         {k: self.parts[k] + other.parts[k] for k in TERMS},
                         self.padding_attention + other.padding_attention)


def batch_flops(config, groups, seq_lens: list[list[int]], width: int, visual: int, targets: int,
                image_sizes: list[tuple[int, int]], packed: bool = False, shared: int = 0,
                past: list[int] | None = None, kv_only_last: bool = False, needs_grad: bool = False) -> StepFlops:
    """FLOPs of one micro-batch. `seq_lens`: per row, the real lengths of its samples (one for a
    padded row); `width`: the padded row length; `visual`: real visual tokens; `targets`: LM-head
    positions; `image_sizes`: (H, W) per image; `packed`: rows hold several samples and their
    padding tail is a segment of its own (PackingCollator) rather than right padding (Collator);
    `shared`: text prefix every row starts with, computed once (eve_vlm.model.prefix); `past`: per
    row, cached positions it attends to (the rows continuing a group's prefix); `kv_only_last`:
    these rows are prefixes, of whose last layer only the keys and values are read (by the rows
    that continue them): the rest of that layer has no backward; `needs_grad`: the rows attend to
    a prefix whose keys and values need gradients, so their hidden states do from the first
    attention on, whatever trains."""
    c = config
    d, hd = c.hidden_size, c.head_dim
    q_out, kv_out = c.num_attention_heads * hd, c.num_key_value_heads * hd
    tokens = sum(sum(row) for row in seq_lens)
    text, pad = tokens - visual, len(seq_lens) * width - tokens
    images = bool(image_sizes)
    llm, pel = "llm" in groups, "pel" in groups

    def trains(module: str, vision_tokens: bool) -> bool:  # does this modality's copy of `module` train?
        if vision_tokens and c.is_decoupled(module):
            return images and "vision" in groups
        return llm

    def used(module: str) -> bool:  # does any trainable weight of `module` see this batch's tokens?
        return trains(module, False) or (images and trains(module, True))

    # per-token forward FLOPs of the four matmul blocks: (module group, FLOPs)
    blocks = [("attention", 2 * d * (q_out + 2 * kv_out)), ("attention", 2 * q_out * d),
              ("ffn", 2 * 2 * d * c.intermediate_size), ("ffn", 2 * c.intermediate_size * d)]
    kv_share = 2 * kv_out / (q_out + 2 * kv_out)  # of the q/k/v block
    past = past or [0] * len(seq_lens)
    pairs = sum(n * (n + 1) // 2 + n * p for row, p in zip(seq_lens, past) for n in row)
    text -= len(seq_lens) * shared  # the shared prefix is counted once, below
    pairs -= len(seq_lens) * shared * (shared + 1) // 2
    if packed:
        pad_pairs = sum((width - sum(row)) * (width - sum(row) + 1) // 2 for row in seq_lens)
    else:
        pad_pairs = sum(width * (width + 1) // 2 - row[0] * (row[0] + 1) // 2 + (width - row[0]) * p
                        for row, p in zip(seq_lens, past))
    per_pair = 4 * c.num_attention_heads * hd

    useful, padding, padding_attention = dict.fromkeys(TERMS, 0.0), 0.0, 0.0
    grad = (images and pel) or llm  # the fused embeddings need gradients (trainable PEL / embeddings)
    for layer in range(c.num_hidden_layers):
        kv_only = kv_only_last and layer == c.num_hidden_layers - 1
        grad = grad or used("norm")  # the input norms' outputs
        for i, (module, fwd) in enumerate(blocks):
            if i == 1:  # the attention core, between q/k/v and o
                back = 2 if (grad or needs_grad) and not kv_only else 0
                useful["attention"] += pairs * per_pair * (1 + back)
                padding_attention += pad_pairs * per_pair * (1 + back)
                grad = grad or needs_grad  # its output reads the prefix's keys and values
            if i == 2:
                grad = grad or used("norm")  # the post-attention norms' outputs
            share = kv_share if i == 0 else 0.0
            back_share = share if kv_only else 1.0  # of the block's backward that runs
            text_back, vision_back = grad + trains(module, False), grad + trains(module, True)
            useful["linear"] += fwd * (text * (1 + text_back * back_share) + visual * (1 + vision_back * back_share))
            padding += fwd * pad * (1 + text_back * back_share)
            grad = grad or used(module)
    if shared:
        prefix = batch_flops(c, [g for g in groups if g == "llm"], [[shared]], shared, 0, 0, [], kv_only_last=True)
        for term in ("linear", "attention"):
            useful[term] += prefix.parts[term]
    head = 2 * d * c.vocab_size * targets
    useful["lm_head"] = head * (1 + (grad or llm) + llm)
    p, s, ph = c.patch_size, c.dense_stride, c.pel_hidden_size
    for h, w in image_sizes:
        conv1 = 2 * 3 * p * p * ph * (h // p) * (w // p)
        conv2 = 2 * ph * s * s * d * (h // (p * s)) * (w // (p * s))
        useful["pel"] += conv1 * (1 + pel) + conv2 * (1 + 2 * pel)
    return StepFlops(sum(useful.values()), padding + padding_attention, useful, padding_attention)


def step_flops(config, groups, batches: list[dict], share_prefix: bool = False) -> StepFlops:
    """FLOPs of one optimizer step over collated micro-batches (Collator or PackingCollator);
    `share_prefix` as the trainer's loss runs them."""
    total = StepFlops()
    for b in batches:
        image_id = config.image_token_id
        lengths = group_prefixes(b, image_id) if share_prefix else None
        if lengths is not None:
            total = total + _grouped(config, groups, GroupedPrefix(b, lengths, image_id))
            continue
        ids = b["input_ids"]
        packed = b.get("attention_mask") is None
        if packed:
            seq_lens = b["meta"]["seq_lens"]
        else:
            seq_lens = [[n] for n in b["attention_mask"].sum(1).tolist()]
        visual = int((ids == image_id).sum()) if image_id is not None else 0
        targets = int((b["labels"][:, 1:] != IGNORE_INDEX).sum())
        sizes = [tuple(p.shape[-2:]) for p in b["pixel_values"]]
        shared = batch_shared_length(b, image_id) if share_prefix else 0
        total = total + batch_flops(config, groups, seq_lens, ids.shape[1], visual, targets, sizes, packed, shared)
    return total


def _grouped(config, groups, split) -> StepFlops:
    """Independent turns: each group's prefix (its images) once, then every row's own tokens
    attending to it. (With a frozen LLM the first layer's queries need no gradient, only the
    prefix's keys and values: there its attention backward is overcounted by a third.)"""
    visual = int(((split.prefix_ids == config.image_token_id) & (split.prefix_mask == 1)).sum())
    sizes = [tuple(p.shape[-2:]) for p in split.prefix_pixels]
    prefix = batch_flops(config, groups, [[n] for n in split.lengths], split.prefix_ids.shape[1], visual, 0, sizes,
                         kv_only_last=True)
    rows = split.attention_mask[:, split.prefix_ids.shape[1]:].sum(1).tolist()
    targets = int((split.labels[:, 1:] != IGNORE_INDEX).sum())
    branch = batch_flops(config, groups, [[n] for n in rows], split.ids.shape[1], 0, targets, [],
                         past=[split.lengths[g] for g in split.groups.tolist()], needs_grad=bool(groups))
    return prefix + branch


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """Best-of GFLOP/s of an n x n x n matmul with the current torch threads: the machine's
    attainable matmul peak, the denominator of MFU on a CPU."""
    import time

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9
