from eve_vlm.model.groups import group_counts, param_group
from tiny import tiny_eve


def test_groups_partition_the_parameters():
    model = tiny_eve()
    for p in model.model.patch_embed.parameters():
        p.requires_grad_(False)
    counts = group_counts(model)
    assert sum(c["total"] for c in counts.values()) == sum(p.numel() for p in model.parameters())
    assert counts["pel"]["trainable"] == 0 and counts["pel"]["total"] > 0
    # upcycled vision copies mirror the decoder layers exactly
    llm_layers = sum(p.numel() for n, p in model.named_parameters() if ".layers." in n and param_group(n) == "llm")
    assert counts["vision"]["total"] == llm_layers
