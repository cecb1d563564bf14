"""Upcycling: an LLM becomes an EVE model.

The text path takes the LLM weights unchanged; every vision copy starts as an exact copy of the
LLM module it shadows (the official recipe copies them before stage 2.1); the PEL starts random.
The result computes exactly what the LLM computes on text-only input.
"""

import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.initialization import no_init_weights

from ..errors import EveError
from ..model.config import EveConfig
from ..model.modeling import EveForConditionalGeneration
from ..processing.chat import IMAGE_MARKER
from ..processing.tokenizers import QWEN_IMAGE_TOKEN

IMAGE_TOKENS = (QWEN_IMAGE_TOKEN, IMAGE_MARKER)  # reused when the vocabulary has one, in this order


def config_from_llm(llm_config, **overrides) -> EveConfig:
    kind = llm_config.model_type
    if kind == "qwen2":
        if getattr(llm_config, "use_sliding_window", False):
            raise NotImplementedError("Qwen2 with sliding-window attention is not supported")
        qkv_bias = True
    elif kind == "llama":
        if llm_config.attention_bias or llm_config.mlp_bias:
            raise NotImplementedError("Llama variants with attention/MLP biases are not supported")
        qkv_bias = False
    else:
        raise NotImplementedError(f"upcycling supports qwen2 and llama LLMs, got model_type {kind!r}")
    fields = dict(
        vocab_size=llm_config.vocab_size, hidden_size=llm_config.hidden_size,
        intermediate_size=llm_config.intermediate_size, num_hidden_layers=llm_config.num_hidden_layers,
        num_attention_heads=llm_config.num_attention_heads, num_key_value_heads=llm_config.num_key_value_heads,
        head_dim=getattr(llm_config, "head_dim", None), hidden_act=llm_config.hidden_act,
        max_position_embeddings=llm_config.max_position_embeddings, rms_norm_eps=llm_config.rms_norm_eps,
        initializer_range=llm_config.initializer_range, tie_word_embeddings=llm_config.tie_word_embeddings,
        rope_parameters=dict(llm_config.rope_parameters), qkv_bias=qkv_bias, text_model_type=kind,
        pad_token_id=llm_config.pad_token_id, bos_token_id=llm_config.bos_token_id,
        eos_token_id=llm_config.eos_token_id,
    )
    fields.update(overrides)
    return EveConfig(**fields)


def load_text_weights(model: EveForConditionalGeneration, state: dict, fresh: tuple[str, ...] = ()) -> None:
    """Load `state` (weights without vision copies) into `model`; every vision copy becomes an exact
    copy of the weight it shadows. Any other tensor of `model` missing from `state`, unless it
    starts with a `fresh` prefix (left for the caller to initialise), is an error."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise EveError(f"source tensors with no place in the EVE model: {unexpected[:10]}")
    tied = model.config.tie_word_embeddings
    with torch.no_grad():
        for name in missing:
            if ".vision_" in name:
                model.get_parameter(name).copy_(state[name.replace("vision_", "")])
            elif not (name.startswith(fresh) or (name == "lm_head.weight" and tied)):
                raise EveError(f"EVE tensor {name} has no source")


def _load_llm(source, gguf_file=None, dtype=None, tokenizer=None):
    if isinstance(source, PreTrainedModel):
        return source, tokenizer
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    llm = AutoModelForCausalLM.from_pretrained(source, dtype=dtype or torch.float32, **kwargs)
    if tokenizer is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        except (OSError, ValueError):
            tokenizer = None  # a weights-only folder: the image token gets a new id
    return llm, tokenizer


def _image_token(tokenizer, vocab_size: int) -> tuple[int, bool]:
    """(id, needs a new embedding row) for the image placeholder."""
    if tokenizer is not None:
        vocab = tokenizer.get_vocab()
        for tok in IMAGE_TOKENS:
            if tok in vocab and vocab[tok] < vocab_size:
                return vocab[tok], False
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_MARKER]})
        token_id = tokenizer.convert_tokens_to_ids(IMAGE_MARKER)
        return token_id, token_id >= vocab_size
    return vocab_size, True


def upcycle(
    source: str | os.PathLike | PreTrainedModel,
    tokenizer=None,
    image_token_id: int | None = None,
    gguf_file: str | None = None,
    dtype: torch.dtype | None = None,
    **config_overrides,
):
    """Return (EVE model, tokenizer). `source`: a local HF folder, a hub id, a folder holding a
    GGUF file (`gguf_file=`), or an in-memory Qwen2ForCausalLM / LlamaForCausalLM.

    The image placeholder reuses `<|image_pad|>` or `<image>` when the tokenizer has one;
    otherwise `<image>` is added to the tokenizer (mutated in place) and the vocabulary grows by
    one row. `config_overrides` set EveConfig fields (e.g. `decoupled=["ffn"]`, `pel_hidden_size`).
    """
    llm, tokenizer = _load_llm(source, gguf_file, dtype, tokenizer)
    grow = False
    if image_token_id is None:
        image_token_id, grow = _image_token(tokenizer, llm.config.vocab_size)
    # A new placeholder id lies past the LLM vocabulary until the embeddings grow below.
    config = config_from_llm(llm.config, image_token_id=None if grow else image_token_id, **config_overrides)
    with no_init_weights():
        model = EveForConditionalGeneration(config)
    model.to(dtype=next(llm.parameters()).dtype)
    load_text_weights(model, llm.state_dict(), fresh=("model.patch_embed.",))
    model._init_weights(model.model.patch_embed)
    model.tie_weights()
    if grow:
        model.resize_token_embeddings(image_token_id + 1, mean_resizing=True)
        model.config.image_token_id = image_token_id
    if getattr(llm, "generation_config", None) is not None:
        model.generation_config = llm.generation_config
    return model, tokenizer
