"""Parameter groups: what each training stage freezes or trains.

pel    - the patch-embedding layer (stage 1 trains only this)
vision - the vision copies inside the decoder (stage 2.1 adds these)
llm    - everything of the original LLM, embeddings and LM head included (stage 2.2 / 3)
"""

from collections import defaultdict
from typing import Literal, get_args

from torch import nn

Group = Literal["pel", "vision", "llm"]
GROUPS: tuple[str, ...] = get_args(Group)
PEFT_PREFIX = "base_model.model."  # where peft puts the wrapped model: LoRA weights join their module's group
PEFT_ORIGINAL = ".original_module."  # peft's frozen copy of a module it trains fully (modules_to_save)


def param_group(name: str) -> str:
    name = name.removeprefix(PEFT_PREFIX)
    if name.startswith("model.patch_embed.") or name.startswith("patch_embed."):
        return "pel"
    if ".vision_" in name:
        return "vision"
    return "llm"


def group_counts(model: nn.Module) -> dict[str, dict[str, int]]:
    """{group: {"total": n, "trainable": n}} over unique parameters (tied weights count once, and
    so does a module peft trains fully: its trained copy, not the frozen original)."""
    counts = defaultdict(lambda: {"total": 0, "trainable": 0})
    for name, p in model.named_parameters():
        if PEFT_ORIGINAL in name:
            continue
        c = counts[param_group(name)]
        c["total"] += p.numel()
        c["trainable"] += p.numel() if p.requires_grad else 0
    return {g: counts[g] for g in GROUPS if g in counts}


def parameter_table(model: nn.Module, title: str = "parameters"):
    """A rich Table of the groups, for printing before training or in the demo."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("group", "parameters", "trainable"):
        table.add_column(col, justify="right" if col != "group" else "left")
    counts = group_counts(model)
    for g, c in counts.items():
        table.add_row(g, f"{c['total'] / 1e6:,.2f} M", f"{c['trainable'] / 1e6:,.2f} M")
    total = sum(c["total"] for c in counts.values())
    table.add_row("all", f"{total / 1e6:,.2f} M", f"{sum(c['trainable'] for c in counts.values()) / 1e6:,.2f} M")
    return table
