"""eve models inside vLLM: the decoder on vLLM's paged attention and parallel layers, the
multimodal processor on eve's own image processor.

What differs from `eve_vlm.model`: vLLM flattens every sequence of a step into one token
dimension, so the modality mask is 1-D; it comes from vLLM's own `is_multimodal` (the positions
it fills with image embeddings in `embed_input_ids`, which runs right before `forward` on the
same tokens), never from token ids, so a generated token that happens to be the placeholder id
stays text, as in eve. Routing is eve's `Routing`, built once per forward. Both copies of every
decoupled module are vLLM parallel layers, so tensor parallelism shards them alike. Pipeline
parallelism is not supported: later stages would never see the mask.
"""

from collections.abc import Iterable, Mapping

import torch
from torch import nn
from transformers import BatchFeature
from vllm.config import VllmConfig
from vllm.distributed import get_tensor_model_parallel_world_size
from vllm.model_executor.layers.activation import SiluAndMul
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from vllm.model_executor.models.interfaces import SupportsMultiModal
from vllm.model_executor.models.utils import AutoWeightsLoader, WeightsMapper, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder, BaseMultiModalProcessor, BaseProcessingInfo, PromptReplacement,
)

from ...errors import CheckpointMismatchError, PlaceholderMismatchError
from ...model.config import EveConfig
from ...model.decoupled import Routing, apply
from ...model.patch_embed import PatchEmbedding
from ...processing.chat import IMAGE_MARKER


class EveProcessingInfo(BaseProcessingInfo):
    def get_hf_config(self) -> EveConfig:
        return self.ctx.get_hf_config(EveConfig)

    def get_image_processor(self):
        return self.get_hf_processor().image_processor

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": None}

    def image_target(self) -> list[int]:
        """The ids that mark an image in a prompt: users (and vLLM's chat parser, from
        `get_placeholder_str`) write eve's `<image>`. That is the image token itself with most
        tokenizers; with Qwen's (image token `<|image_pad|>`) it is plain text, which vLLM then
        matches in the decoded prompt when the ids merged with their neighbours."""
        return self.get_tokenizer().encode(IMAGE_MARKER, add_special_tokens=False)


class EveDummyInputsBuilder(BaseDummyInputsBuilder[EveProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return IMAGE_MARKER * mm_counts.get("image", 0)

    def get_dummy_mm_data(self, seq_len, mm_counts, mm_options):
        # vLLM sizes the encoder cache by the dummy image's token count: it must be the worst case.
        height, width = self.info.get_image_processor().largest_input()
        return {"image": self._get_dummy_images(width=width, height=height, num_images=mm_counts.get("image", 0),
                                                overrides=mm_options.get("image") if mm_options else None)}


class EveMultiModalProcessor(BaseMultiModalProcessor[EveProcessingInfo]):
    """vLLM tokenizes the prompt itself (one placeholder token per image) and expands each
    placeholder to the image's 1 + h(w+1) tokens from `_get_prompt_updates`; the images go through
    eve's image processor, so sizes and token counts are `EveImageProcessor`'s."""

    def _call_hf_processor(self, hf_data, hf_kwargs) -> BatchFeature:
        images = self.info.get_image_processor()(hf_data["images"])
        return BatchFeature({"pixel_values": list(images["pixel_values"])})

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs) -> Mapping[str, MultiModalFieldConfig]:
        return {"pixel_values": MultiModalFieldConfig.batched("image")}

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        image_token_id = self.info.get_hf_config().image_token_id
        image_processor = self.info.get_image_processor()

        def expand(i: int) -> list[int]:
            pixels = out_mm_kwargs["image"][i]["pixel_values"].data
            return [image_token_id] * image_processor.num_tokens(*pixels.shape[-2:])

        return [PromptReplacement(modality="image", target=self.info.image_target(), replacement=expand)]


# transformers' checkpoint name -> (vLLM's stacked parameter, shard)
_STACKED = {"q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v"),
            "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}


def _first(layer: nn.Module | None):
    """vLLM's linear layers return (output, bias): the function that keeps the output."""
    return None if layer is None else (lambda x: layer(x)[0])


def _twin(make, decoupled: bool, prefix: str, name: str):
    return make(f"{prefix}.{name}"), (make(f"{prefix}.vision_{name}") if decoupled else None)


class EveAttention(nn.Module):
    def __init__(self, config: EveConfig, cache_config, quant_config, prefix: str):
        super().__init__()
        tp = get_tensor_model_parallel_world_size()
        heads, kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.q_size = heads // tp * self.head_dim
        self.kv_size = max(1, kv_heads // tp) * self.head_dim
        dec = config.is_decoupled("attention")
        qkv = lambda p: QKVParallelLinear(  # noqa: E731
            config.hidden_size, self.head_dim, heads, kv_heads, bias=config.qkv_bias, quant_config=quant_config,
            prefix=p)
        o = lambda p: RowParallelLinear(  # noqa: E731
            heads * self.head_dim, config.hidden_size, bias=False, quant_config=quant_config, prefix=p)
        self.qkv_proj, self.vision_qkv_proj = _twin(qkv, dec, prefix, "qkv_proj")
        self.o_proj, self.vision_o_proj = _twin(o, dec, prefix, "o_proj")
        self.rotary_emb = get_rope(self.head_dim, max_position=config.max_position_embeddings,
                                   rope_parameters=config.rope_parameters)
        self.attn = Attention(heads // tp, self.head_dim, self.head_dim**-0.5, num_kv_heads=max(1, kv_heads // tp),
                              cache_config=cache_config, quant_config=quant_config, prefix=f"{prefix}.attn")

    def forward(self, positions, h: list[torch.Tensor], routing: Routing) -> list[torch.Tensor]:
        """`h`: the normed rows split by modality -> the output split the same way."""
        qkv = routing.unsort(routing.join(apply(h, _first(self.qkv_proj), _first(self.vision_qkv_proj))))
        q, k, v = qkv.reshape(positions.shape[0], -1).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = self.rotary_emb(positions, q, k)
        out = self.attn(q, k, v)
        return apply(routing.split(routing.sort(out)), _first(self.o_proj), _first(self.vision_o_proj))


class EveMLP(nn.Module):
    def __init__(self, config: EveConfig, quant_config, prefix: str):
        super().__init__()
        if config.hidden_act != "silu":
            raise ValueError(f"eve on vLLM supports hidden_act 'silu' only, got {config.hidden_act!r}")
        self.gate_up_proj = MergedColumnParallelLinear(
            config.hidden_size, [config.intermediate_size] * 2, bias=False, quant_config=quant_config,
            prefix=f"{prefix}.gate_up_proj")
        self.down_proj = RowParallelLinear(config.intermediate_size, config.hidden_size, bias=False,
                                           quant_config=quant_config, prefix=f"{prefix}.down_proj")
        self.act_fn = SiluAndMul()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_up_proj(x)[0]))[0]


class EveDecoderLayer(nn.Module):
    def __init__(self, config: EveConfig, cache_config, quant_config, prefix: str):
        super().__init__()
        norm = lambda p: RMSNorm(config.hidden_size, eps=config.rms_norm_eps)  # noqa: E731
        mlp = lambda p: EveMLP(config, quant_config, p)  # noqa: E731
        self.self_attn = EveAttention(config, cache_config, quant_config, f"{prefix}.self_attn")
        norms = config.is_decoupled("norm")
        self.input_layernorm, self.vision_input_layernorm = _twin(norm, norms, prefix, "input_layernorm")
        self.post_attention_layernorm, self.vision_post_attention_layernorm = _twin(
            norm, norms, prefix, "post_attention_layernorm")
        self.mlp, self.vision_mlp = _twin(mlp, config.is_decoupled("ffn"), prefix, "mlp")

    def forward(self, positions, hidden: torch.Tensor, routing: Routing) -> torch.Tensor:
        """`hidden`: the modality-sorted rows (sequence order for `Routing.TEXT_ONLY`)."""
        x = routing.split(hidden)
        h = apply(x, self.input_layernorm, self.vision_input_layernorm)
        x = [a + b for a, b in zip(x, self.self_attn(positions, h, routing))]
        h = apply(x, self.post_attention_layernorm, self.vision_post_attention_layernorm)
        return routing.join([a + b for a, b in zip(x, apply(h, self.mlp, self.vision_mlp))])


class EveModel(nn.Module):
    def __init__(self, config: EveConfig, vllm_config: VllmConfig, prefix: str):
        super().__init__()
        cache_config, quant_config = vllm_config.cache_config, vllm_config.quant_config
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, quant_config=quant_config,
                                                   prefix=f"{prefix}.embed_tokens")
        self.patch_embed = PatchEmbedding(config.hidden_size, config.pel_hidden_size, config.patch_size,
                                          config.dense_stride)
        self.layers = nn.ModuleList(
            EveDecoderLayer(config, cache_config, quant_config, f"{prefix}.layers.{i}")
            for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, positions, hidden: torch.Tensor, routing: Routing) -> torch.Tensor:
        hidden = routing.sort(hidden)
        for layer in self.layers:
            hidden = layer(positions, hidden, routing)
        return self.norm(routing.unsort(hidden))


@MULTIMODAL_REGISTRY.register_processor(
    EveMultiModalProcessor, info=EveProcessingInfo, dummy_inputs=EveDummyInputsBuilder)
class EveForConditionalGeneration(nn.Module, SupportsMultiModal):
    # Checkpoint names are transformers' (q/k/v, gate/up apart); vLLM stacks them. The vision copies
    # need their own entries: ".q_proj" is not a substring of ".vision_q_proj".
    hf_to_vllm_mapper = WeightsMapper(orig_to_new_stacked={
        f".{vision}{name}": (f".{vision}{stacked}", shard)
        for vision in ("", "vision_") for name, (stacked, shard) in _STACKED.items()
    })

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality == "image":
            return IMAGE_MARKER
        raise ValueError(f"eve models take images only, not {modality!r}")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config: EveConfig = vllm_config.model_config.hf_config
        if vllm_config.parallel_config.pipeline_parallel_size > 1:
            raise NotImplementedError("eve on vLLM: pipeline parallelism is not supported (tensor parallelism is)")
        self.config = config
        self.model = EveModel(config, vllm_config, maybe_prefix(prefix, "model"))
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, quant_config=vllm_config.quant_config,
                                      prefix=maybe_prefix(prefix, "lm_head"))
        if config.tie_word_embeddings:
            self.lm_head = self.lm_head.tie_weights(self.model.embed_tokens)
        self.logits_processor = LogitsProcessor(config.vocab_size)
        self._visual: torch.Tensor | None = None  # set by embed_input_ids, used by the next forward

    def embed_multimodal(self, pixel_values=None, **kwargs) -> list[torch.Tensor]:
        """One [1 + h(w+1), hidden] tensor per image, in prompt order."""
        if pixel_values is None:
            return []
        return self.model.patch_embed(list(pixel_values))

    def embed_input_ids(self, input_ids, multimodal_embeddings=None, *, is_multimodal=None) -> torch.Tensor:
        embeds = self.model.embed_tokens(input_ids)
        self._visual = None
        if multimodal_embeddings is None or len(multimodal_embeddings) == 0:
            return embeds
        visual = is_multimodal.to(embeds.device, non_blocking=True)
        rows = torch.cat(list(multimodal_embeddings))
        if rows.shape[0] != int(visual.sum()):
            raise PlaceholderMismatchError(
                f"{int(visual.sum())} image placeholder position(s) in this step but {rows.shape[0]} image embeddings")
        embeds[visual] = rows.to(embeds.dtype)
        self._visual = visual
        return embeds

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.embed_input_ids(input_ids)
        visual, self._visual = self._visual, None
        if visual is None or not self.config.decoupled:
            routing = Routing.TEXT_ONLY
        else:  # the runner may pad the step past the embedded tokens: padding is text
            padded = visual.new_zeros(inputs_embeds.shape[0])
            padded[: visual.shape[0]] = visual
            routing = Routing.from_mask(padded)
        return self.model(positions, inputs_embeds, routing)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.logits_processor(self.lm_head, hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Every checkpoint tensor must have a place (vLLM's loader names one that has none) and
        every parameter its tensors: vLLM checks parameters, not the shards of a stacked one, and
        exempts its linear layers. A tied lm_head is an alias of the embedding."""
        seen = set()

        def record(named_tensors):
            for name, tensor in named_tensors:
                seen.add(name)
                yield name, tensor

        loaded = AutoWeightsLoader(self).load_weights(record(weights), mapper=self.hf_to_vllm_mapper)
        missing = sorted(self._checkpoint_names() - seen)
        if missing:
            raise CheckpointMismatchError(f"the checkpoint has no tensor for {missing}")
        return loaded

    def _checkpoint_names(self) -> set[str]:
        """The tensor names (transformers') of a complete checkpoint."""
        parts: dict[str, list[str]] = {}
        for name, (stacked, _) in _STACKED.items():
            parts.setdefault(stacked, []).append(name)
        names = set()
        for name, _ in self.named_parameters():
            module, leaf = name.rsplit(".", 1)
            parent, _, child = module.rpartition(".")
            own = child.removeprefix("vision_")
            vision = child[: len(child) - len(own)]
            names.update(f"{parent}.{vision}{part}.{leaf}".lstrip(".") for part in parts.get(own, [own]))
        return names
