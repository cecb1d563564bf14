"""Text-only parity with transformers' Qwen2 / Llama (litgpt-style: tiny random configs, fp32)."""

import pytest
import torch

from eve_vlm.convert.upcycle import upcycle
from tiny import IMAGE_ID, hf_llm, pad, perturb_vision, text


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
@pytest.mark.parametrize("tie", [False, True])
def test_text_logits_and_greedy_generate_equal_hf(kind, tie):
    llm = hf_llm(kind, tie=tie)
    eve = upcycle(llm, image_token_id=IMAGE_ID)[0].eval()
    perturb_vision(eve)  # text-only input must never touch the vision copies
    ids, mask = pad([text(12), text(7)], side="left")
    with torch.no_grad():
        ref = llm(ids, attention_mask=mask).logits
        got = eve(ids, attention_mask=mask).logits
    keep = mask.bool()
    torch.testing.assert_close(got[keep], ref[keep], rtol=1e-5, atol=1e-5)
    gen = dict(attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(eve.generate(ids, **gen), llm.generate(ids, **gen))


def test_upcycled_copies_are_exact_and_pel_is_fresh():
    llm = hf_llm("qwen2")
    eve = upcycle(llm, image_token_id=IMAGE_ID)[0]
    sd = eve.state_dict()
    for name, tensor in llm.state_dict().items():
        assert torch.equal(sd[name], tensor), name
    vision = [n for n in sd if ".vision_" in n]
    assert len(vision) == 2 * 12  # per layer: q,k,v weight+bias 6, o 1, mlp 3, two norms 2
    for n in vision:
        assert torch.equal(sd[n], sd[n.replace("vision_", "")]), n
    assert {n for n in sd if n.startswith("model.patch_embed.")} == {
        f"model.patch_embed.{p}" for p in
        ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "class_embedding", "split_embedding")
    }


def test_unknown_llm_and_unsupported_variants_are_refused():
    from transformers import LlamaConfig, LlamaForCausalLM

    from tiny import TEXT_SHAPE

    biased = LlamaForCausalLM(LlamaConfig(**TEXT_SHAPE, attention_bias=True))
    with pytest.raises(NotImplementedError, match="biases"):
        upcycle(biased, image_token_id=IMAGE_ID)[0]
