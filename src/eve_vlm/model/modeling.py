"""EveModel / EveForConditionalGeneration: transformers-native classes for EVEv2-style VLMs.

input_ids (placeholders already expanded) -> embed text, PEL the images, fuse (fusion.py) ->
sort the rows by modality once (decoupled.py) -> decoder layers (decoder.py) -> back to sequence
order -> shared norm + LM head.
"""

import math

import torch
from torch import nn
from transformers import (
    AutoImageProcessor, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, GenerationMixin,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm, Qwen2RotaryEmbedding

from ..errors import PlaceholderMismatchError
from ..processing.image import EveImageProcessor
from ..processing.processor import EveProcessor
from .config import EveConfig
from .decoder import EveDecoderLayer
from .decoupled import Routing, zero_link
from .fusion import fuse
from .patch_embed import PatchEmbedding


class EvePreTrainedModel(PreTrainedModel):
    config_class = EveConfig
    config: EveConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["EveDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, PatchEmbedding):
            # Official init: torch defaults for the convs, N(0, 1) for the CLS / split vectors.
            for conv in (module.conv1, module.conv2):
                init.kaiming_uniform_(conv.weight, a=math.sqrt(5))
                bound = 1 / math.sqrt(conv.weight[0].numel())
                init.uniform_(conv.bias, -bound, bound)
            init.normal_(module.class_embedding, std=1.0)
            init.normal_(module.split_embedding, std=1.0)


class EveModel(EvePreTrainedModel):
    def __init__(self, config: EveConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.patch_embed = PatchEmbedding(config.hidden_size, config.pel_hidden_size, config.patch_size, config.dense_stride)
        self.layers = nn.ModuleList(EveDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Qwen2RotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.every_parameter = False
        self.post_init()

    def use_every_parameter(self, on: bool = True) -> None:
        """FSDP reduces the gradients of the same parameters on every rank: a rank whose batch has no
        image would leave the PEL and the vision copies without gradients and the collectives
        mismatched (a crash on gloo, a hang on NCCL). With this on, a training forward without
        images still links them to the output, with zero gradients."""
        self.every_parameter = on
        for layer in self.layers:
            layer.every_parameter = on

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def embed(self, input_ids, pixel_values=None, cache=None):
        """Fused input embeddings and the bool [B, L] mask of visual positions."""
        visual = input_ids == self.config.image_token_id
        embeds = self.embed_tokens(input_ids)
        if pixel_values is not None and len(pixel_values):  # a text-only batch may carry []
            return fuse(embeds, visual, self.patch_embed(list(pixel_values))), visual
        prefilling = cache is None or cache.get_seq_length() == 0
        if prefilling and bool(visual.any()):
            raise PlaceholderMismatchError(
                f"input_ids hold {int(visual.sum())} image placeholder token(s) (id {self.config.image_token_id}) "
                "but no pixel_values were given"
            )
        if self.every_parameter and self.training:
            embeds = embeds + zero_link(self.patch_embed.parameters())
        # After the prefill every new token is text, even if it happens to be the placeholder id.
        return embeds, torch.zeros_like(visual)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: list[torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        visual_mask: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if inputs_embeds is None:
            inputs_embeds, visual_mask = self.embed(input_ids, pixel_values, cache)
        elif visual_mask is None:
            visual_mask = torch.zeros(inputs_embeds.shape[:2], dtype=torch.bool, device=inputs_embeds.device)
        if position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device).unsqueeze(0) + past
        mask = create_causal_mask(
            config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
            cache=cache, position_ids=position_ids,
        )
        routing = Routing.from_mask(visual_mask) if self.config.decoupled else Routing.TEXT_ONLY
        position_embeddings = self.rotary_emb(inputs_embeds, position_ids)
        hidden = routing.sort(inputs_embeds)  # modality-sorted through all layers (decoupled.py)
        for layer in self.layers:
            hidden = layer(hidden, routing, attention_mask=mask, position_embeddings=position_embeddings, cache=cache, **kwargs)
        hidden = routing.unsort(hidden)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden), cache=cache if use_cache else None)


class EveForConditionalGeneration(EvePreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: EveConfig):
        super().__init__(config)
        self.model = EveModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: list[torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """`pixel_values`: a list of normalized [3, H, W] tensors (any sizes), one per image in
        order; `input_ids` hold exactly 1 + h*(w+1) `image_token_id` positions per image.
        `logits_to_keep`: as in transformers (last N positions or 1-D indices), or a [batch, seq]
        bool mask, which returns the logits of the masked positions only, flattened to [N, vocab]."""
        out = self.model(
            input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
            position_ids=position_ids, cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs,
        )
        hidden = out.last_hidden_state
        if isinstance(logits_to_keep, torch.Tensor) and logits_to_keep.dtype == torch.bool:
            # training asks for the supervised positions only: the LM head is a quarter of a QA step
            logits = self.lm_head(hidden[logits_to_keep])
        else:
            # sliced here, not by transformers' `slice_logits_to_keep`: vLLM's venv has a transformers without it
            keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            logits = self.lm_head(hidden[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=out.cache)


# Loading an eve folder with the Auto classes needs no remote code (the config registers itself in config.py).
AutoModel.register(EveConfig, EveModel, exist_ok=True)
AutoModelForImageTextToText.register(EveConfig, EveForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(EveConfig, EveForConditionalGeneration, exist_ok=True)
AutoImageProcessor.register(
    EveConfig, image_processor_classes={"pil": EveImageProcessor, "torchvision": EveImageProcessor}, exist_ok=True)
AutoProcessor.register(EveConfig, EveProcessor, exist_ok=True)
