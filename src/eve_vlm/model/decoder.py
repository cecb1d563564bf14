"""The modality-decoupled decoder layer (EVEv2 "divide and conquer").

Pre-norm like Qwen2/Llama. Each token goes through its own modality's norm, q/k/v, o and SwiGLU
FFN; one joint causal attention (RoPE, GQA, KV cache: the transformers implementations) runs over
all tokens. The layers take and return the modality-sorted rows of `decoupled.Routing`, so each
module runs on a contiguous slice; only q/k/v and the attention output are reordered, as the
attention needs sequence order. The text path has exactly the transformers Qwen2 parameter names,
so an LLM checkpoint loads into it unchanged; the vision copies are siblings named `vision_*` (the
official checkpoint calls them `moe_*`, see `eve_vlm.convert.official`).
"""

from collections.abc import Callable

from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP, Qwen2RMSNorm
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb, eager_attention_forward

from .config import EveConfig
from .decoupled import Routing, apply, zero_link


def _twin(make: Callable[[], nn.Module], decoupled: bool) -> tuple[nn.Module, nn.Module | None]:
    return make(), (make() if decoupled else None)


class EveAttention(nn.Module):
    def __init__(self, config: EveConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        q_out = config.num_attention_heads * self.head_dim
        kv_out = config.num_key_value_heads * self.head_dim
        d, bias, dec = config.hidden_size, config.qkv_bias, config.is_decoupled("attention")
        self.q_proj, self.vision_q_proj = _twin(lambda: nn.Linear(d, q_out, bias=bias), dec)
        self.k_proj, self.vision_k_proj = _twin(lambda: nn.Linear(d, kv_out, bias=bias), dec)
        self.v_proj, self.vision_v_proj = _twin(lambda: nn.Linear(d, kv_out, bias=bias), dec)
        self.o_proj, self.vision_o_proj = _twin(lambda: nn.Linear(q_out, d, bias=False), dec)

    def forward(self, h, routing: Routing, position_embeddings, attention_mask, cache=None, **kwargs):
        """`h`: the normed hidden states split by modality -> the output split the same way."""
        project = lambda text, vision: routing.unsort(routing.join(apply(h, text, vision)))  # noqa: E731
        q = project(self.q_proj, self.vision_q_proj)  # [B, L, heads * head_dim], sequence order
        k = project(self.k_proj, self.vision_k_proj)
        v = project(self.v_proj, self.vision_v_proj)
        bsz, seq = q.shape[:2]
        q, k, v = (t.view(bsz, seq, -1, self.head_dim).transpose(1, 2) for t in (q, k, v))
        cos, sin = position_embeddings
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        out, _ = attention(
            self, q, k, v, attention_mask,
            dropout=self.config.attention_dropout if self.training else 0.0,
            scaling=self.scaling, **kwargs,
        )
        return apply(routing.split(routing.sort(out.reshape(bsz, seq, -1))), self.o_proj, self.vision_o_proj)


class EveDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: EveConfig, layer_idx: int):
        super().__init__()
        norm_dec, ffn_dec = config.is_decoupled("norm"), config.is_decoupled("ffn")
        make_norm = lambda: Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)  # noqa: E731
        make_mlp = lambda: Qwen2MLP(config)  # noqa: E731  (SwiGLU without biases, as Llama's)
        self.self_attn = EveAttention(config, layer_idx)
        self.input_layernorm, self.vision_input_layernorm = _twin(make_norm, norm_dec)
        self.post_attention_layernorm, self.vision_post_attention_layernorm = _twin(make_norm, norm_dec)
        self.mlp, self.vision_mlp = _twin(make_mlp, ffn_dec)
        self.every_parameter = False  # set by EveModel.use_every_parameter

    def forward(self, hidden_states, routing: Routing, attention_mask=None, position_embeddings=None, cache=None, **kwargs):
        """`hidden_states`: modality-sorted [B*L, D] rows, or [B, L, D] for `Routing.TEXT_ONLY`."""
        x = routing.split(hidden_states)  # split (views) until the layer's end: no copy between modules
        h = apply(x, self.input_layernorm, self.vision_input_layernorm)
        attn = self.self_attn(h, routing, position_embeddings, attention_mask, cache=cache, **kwargs)
        x = [a + b for a, b in zip(x, attn)]
        h = apply(x, self.post_attention_layernorm, self.vision_post_attention_layernorm)
        out = routing.join([a + b for a, b in zip(x, apply(h, self.mlp, self.vision_mlp))])
        if self.every_parameter and self.training and not routing.has_vision:
            out = out + zero_link(p for n, p in self.named_parameters() if ".vision_" in f".{n}")
        return out
