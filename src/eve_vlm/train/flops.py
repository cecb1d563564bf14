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

LoRA (`Adapters`): the adapted base weights are frozen (input gradients only, once anything
upstream needs one), and each adapter adds its two small matmuls, x -> A (r x in) -> B (out x r):
forward 2r(in + out) per token; backward the weight gradients of A and B, B's input gradient
(A trains) and A's input gradient where the base's is needed too. From the first adapter on, the
backward runs through the whole decoder.

Padding tokens (right padding, or a packed row's tail) go through every linear layer too; that
compute is wasted and kept apart in `StepFlops.padding`; MFU counts `useful` only.
"""

from dataclasses import dataclass, field

import torch

from ..model.prefix import GroupedPrefix, batch_shared_length, group_prefixes
from ..processing.chat import IGNORE_INDEX

TERMS = ("linear", "attention", "lm_head", "pel")
# the decoder's matmul blocks in order, each (module group, its projections): projections of one
# block read the same input, so gradients start after the whole block
BLOCKS = (("attention", ("q_proj", "k_proj", "v_proj")), ("attention", ("o_proj",)),
          ("ffn", ("gate_proj", "up_proj")), ("ffn", ("down_proj",)))


@dataclass(frozen=True)
class Adapters:
    """LoRA adapters: their rank and the full names of the adapted linear modules
    (`model.layers.0.self_attn.vision_q_proj`, `lm_head`), as `lora.resolve_target` gives them."""
    r: int
    modules: frozenset

    def at(self, layer: int, proj: str, vision: bool) -> bool:
        """Is the vision (else the text) copy of projection `proj` of layer `layer` adapted?"""
        if proj in BLOCKS[2][1] + BLOCKS[3][1]:
            return f"model.layers.{layer}.{'vision_mlp' if vision else 'mlp'}.{proj}" in self.modules
        return f"model.layers.{layer}.self_attn.{'vision_' if vision else ''}{proj}" in self.modules

    def flops(self, n_in: int, n_out: int, grad: bool) -> int:
        """Forward + backward of one adapter, per token; `grad`: its input needs a gradient."""
        return 2 * self.r * (n_in * (2 + grad) + n_out * 3)


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
                past: list[int] | None = None, kv_only_last: bool = False, needs_grad: bool = False,
                adapters: Adapters | None = None) -> StepFlops:
    """FLOPs of one micro-batch. `seq_lens`: per row, the real lengths of its samples (one for a
    padded row); `width`: the padded row length; `visual`: real visual tokens; `targets`: LM-head
    positions; `image_sizes`: (H, W) per image; `packed`: rows hold several samples and their
    padding tail is a segment of its own (PackingCollator) rather than right padding (Collator);
    `shared`: text prefix every row starts with, computed once (eve_vlm.model.prefix); `past`: per
    row, cached positions it attends to (the rows continuing a group's prefix); `kv_only_last`:
    these rows are prefixes, of whose last layer only the keys and values are read (by the rows
    that continue them): the rest of that layer has no backward; `needs_grad`: the rows attend to
    a prefix whose keys and values need gradients, so their hidden states do from the first
    attention on, whatever trains; `adapters`: LoRA's, if any."""
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

    def adapted(module: str, layer: int, proj: str, vision_tokens: bool) -> bool:  # has it an adapter?
        return adapters is not None and adapters.at(layer, proj, vision_tokens and c.is_decoupled(module))

    def used(module: str, vision_tokens: bool, layer: int = 0, projs=()) -> bool:
        """Does a trainable weight of this modality's copy of the block see its tokens?"""
        if vision_tokens and not images:
            return False
        return trains(module, vision_tokens) or any(adapted(module, layer, p, vision_tokens) for p in projs)

    # per projection: (input width, output width)
    shapes = {"q_proj": (d, q_out), "k_proj": (d, kv_out), "v_proj": (d, kv_out), "o_proj": (q_out, d),
              "gate_proj": (d, c.intermediate_size), "up_proj": (d, c.intermediate_size),
              "down_proj": (c.intermediate_size, d)}
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
    # whether the hidden states need gradients: between the layers (`grad`), and within a layer per
    # modality (text, vision): their rows are separate tensors from the routing split to the join,
    # except in the attention core, which reads both
    grad = (images and pel) or llm  # the fused embeddings need gradients (trainable PEL / embeddings)
    for layer in range(c.num_hidden_layers):
        kv_only = kv_only_last and layer == c.num_hidden_layers - 1
        needs = [grad or used("norm", v) for v in (False, True)]  # after the input norms
        for i, (module, projs) in enumerate(BLOCKS):
            if i == 1:  # the attention core, between q/k/v and o
                joint = any(needs) or needs_grad  # its output reads the prefix's keys and values
                back = 2 if joint and not kv_only else 0
                useful["attention"] += pairs * per_pair * (1 + back)
                padding_attention += pad_pairs * per_pair * (1 + back)
                needs = [joint, joint]
            if i == 2:
                needs = [g or used("norm", v) for g, v in zip(needs, (False, True))]  # post-attention norms
            for proj in projs:
                n_in, n_out = shapes[proj]
                fwd = 2 * n_in * n_out
                runs = not kv_only or proj in ("k_proj", "v_proj")  # whether its backward runs
                text_back, vision_back = ((g + trains(module, v)) * runs for g, v in zip(needs, (False, True)))
                useful["linear"] += fwd * (text * (1 + text_back) + visual * (1 + vision_back))
                padding += fwd * pad * (1 + text_back)  # padding rows take the text path
                for tokens, pad_tokens, v in ((text, pad, False), (visual, 0, True)):
                    if adapted(module, layer, proj, v):
                        cost = adapters.flops(n_in, n_out, needs[v]) if runs else 2 * adapters.r * (n_in + n_out)
                        useful["linear"] += cost * tokens
                        padding += cost * pad_tokens
            needs = [g or used(module, v, layer, projs) for g, v in zip(needs, (False, True))]
        grad = needs[0] or (images and needs[1])  # the routing join
    if shared:
        prefix = batch_flops(c, [g for g in groups if g == "llm"], [[shared]], shared, 0, 0, [], kv_only_last=True,
                             adapters=adapters)
        for term in ("linear", "attention"):
            useful[term] += prefix.parts[term]
    head = 2 * d * c.vocab_size * targets
    useful["lm_head"] = head * (1 + (grad or llm) + llm)
    if adapters is not None and "lm_head" in adapters.modules:
        useful["lm_head"] += adapters.flops(d, c.vocab_size, grad) * targets
    p, s, ph = c.patch_size, c.dense_stride, c.pel_hidden_size
    for h, w in image_sizes:
        conv1 = 2 * 3 * p * p * ph * (h // p) * (w // p)
        conv2 = 2 * ph * s * s * d * (h // (p * s)) * (w // (p * s))
        useful["pel"] += conv1 * (1 + pel) + conv2 * (1 + 2 * pel)
    return StepFlops(sum(useful.values()), padding + padding_attention, useful, padding_attention)


def step_flops(config, groups, batches: list[dict], share_prefix: bool = False,
               adapters: Adapters | None = None) -> StepFlops:
    """FLOPs of one optimizer step over collated micro-batches (Collator or PackingCollator);
    `share_prefix` as the trainer's loss runs them; `adapters`: LoRA's, if any."""
    total = StepFlops()
    for b in batches:
        image_id = config.image_token_id
        lengths = group_prefixes(b, image_id) if share_prefix else None
        if lengths is not None:
            total = total + _grouped(config, groups, GroupedPrefix(b, lengths, image_id), adapters)
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
        total = total + batch_flops(config, groups, seq_lens, ids.shape[1], visual, targets, sizes, packed, shared,
                                    adapters=adapters)
    return total


def _grouped(config, groups, split, adapters: Adapters | None) -> StepFlops:
    """Independent turns: each group's prefix (its images) once, then every row's own tokens
    attending to it. (With a frozen LLM the first layer's queries need no gradient, only the
    prefix's keys and values: there its attention backward is overcounted by a third.)"""
    visual = int(((split.prefix_ids == config.image_token_id) & (split.prefix_mask == 1)).sum())
    sizes = [tuple(p.shape[-2:]) for p in split.prefix_pixels]
    prefix = batch_flops(config, groups, [[n] for n in split.lengths], split.prefix_ids.shape[1], visual, 0, sizes,
                         kv_only_last=True, adapters=adapters)
    rows = split.attention_mask[:, split.prefix_ids.shape[1]:].sum(1).tolist()
    targets = int((split.labels[:, 1:] != IGNORE_INDEX).sum())
    branch = batch_flops(config, groups, [[n] for n in rows], split.ids.shape[1], 0, targets, [],
                         past=[split.lengths[g] for g in split.groups.tolist()],
                         needs_grad=bool(groups) or adapters is not None, adapters=adapters)
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
