"""EveConfig: a Qwen2/Llama text decoder plus the patch-embedding and decoupling fields."""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig
from transformers.modeling_rope_utils import RopeParameters

from .variants import DECOUPLABLE, EVEV2, Decoupled  # noqa: F401  (the config's choices, re-exported)


@strict
class EveConfig(PreTrainedConfig):
    model_type = "eve"

    # text decoder (Qwen2 / Llama fields, same names as transformers uses)
    vocab_size: int = 151936
    hidden_size: int = 896
    intermediate_size: int = 4864
    num_hidden_layers: int = 24
    num_attention_heads: int = 14
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    tie_word_embeddings: bool = False
    rope_parameters: RopeParameters | dict | None = None
    qkv_bias: bool = True  # Qwen2 has q/k/v biases, Llama has none; o_proj never has one
    attention_dropout: float | int = 0.0
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    text_model_type: str = "qwen2"  # what `to_llm` / the official converter write back

    # vision
    patch_size: int = 16
    dense_stride: int = 2
    pel_hidden_size: int = 1024
    image_token_id: int | None = None
    decoupled: list[str] | None = None

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.decoupled is None:
            self.decoupled = list(EVEV2)
        unknown = set(self.decoupled) - set(DECOUPLABLE)
        if unknown:
            raise ValueError(f"decoupled: unknown module group(s) {sorted(unknown)}; choose from {DECOUPLABLE}")
        self.decoupled = [m for m in DECOUPLABLE if m in self.decoupled]
        if self.text_model_type not in ("qwen2", "llama"):
            raise ValueError(f"text_model_type must be 'qwen2' or 'llama', got {self.text_model_type!r}")
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )

    def is_decoupled(self, group: str) -> bool:
        return group in self.decoupled


AutoConfig.register("eve", EveConfig, exist_ok=True)
