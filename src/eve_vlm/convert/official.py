"""Conversion between the official EVEv2 checkpoint layout (e.g. BAAI/EVE-7B-HD-v2.0) and ours.

Weights are only renamed, never changed: vision copies `moe_*` <-> `vision_*`, and the PEL
`model.vision_tower.patch_embedding.{0,2}` <-> `model.patch_embed.conv{1,2}`. The source must
hold exactly the tensors its config describes: the official loader once left the CLS/split
vectors silently random (EVE issue #18), so any missing, extra or mis-shaped tensor is an error
that names them.

Memory stays bounded for a 28 GB checkpoint: source shards are memory-mapped and read one tensor
at a time, and at most one output shard (`max_shard_bytes`) is held before it is written.
"""

import json
import os
import shutil
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..dtypes import torch_dtype
from ..errors import CheckpointMismatchError, ConversionError
from ..model.config import DECOUPLABLE, EveConfig
from ..model.modeling import EveForConditionalGeneration

OFFICIAL_MODEL_TYPE = "eve-qwen2"
OFFICIAL_VISION_TOWER = "openai/eve-anyratio-res1600-patch16"  # a processor folder name, not weights
IMAGE_PAD = "<|image_pad|>"
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "added_tokens.json",
    "special_tokens_map.json", "chat_template.jinja", "chat_template.json", "tokenizer.model",
)
MAX_SHARD_BYTES = 5 * 10**9
# Our decoupled group -> the substring the official code tests `moe_part` for (official order).
MOE_PARTS = {"norm": "layernorm", "attention": "self_attn", "ffn": "mlp"}
# (ours, official) name prefixes of the PEL, most specific first.
_PEL_PREFIXES = (
    ("model.patch_embed.conv1.", "model.vision_tower.patch_embedding.0."),
    ("model.patch_embed.conv2.", "model.vision_tower.patch_embedding.2."),
    ("model.patch_embed.", "model.vision_tower."),
)
_TEXT_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
    "tie_word_embeddings", "attention_dropout", "use_cache", "pad_token_id", "bos_token_id", "eos_token_id",
)
_MAX_NAMED = 20  # tensors listed per kind of mismatch; the count is always given


def to_official_name(name: str) -> str:
    for ours, theirs in _PEL_PREFIXES:
        if name.startswith(ours):
            return theirs + name[len(ours):]
    return name.replace(".vision_", ".moe_")


def from_official_name(name: str) -> str:
    for ours, theirs in _PEL_PREFIXES:
        if name.startswith(theirs):
            return ours + name[len(theirs):]
    return name.replace(".moe_", ".vision_")


def expected_shapes(config: EveConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors a checkpoint of `config` holds (our names)."""
    with torch.device("meta"):
        model = EveForConditionalGeneration(config)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if config.tie_word_embeddings:
        del shapes["lm_head.weight"]  # saved once, as the embedding
    return shapes


# ---------------------------------------------------------------------------------------- config


def config_from_official(official: dict, image_token_id: int, patch_size: int = 16, dense_stride: int = 2) -> EveConfig:
    if official.get("model_type") != OFFICIAL_MODEL_TYPE:
        raise ConversionError(
            f"not an official EVEv2 config: model_type is {official.get('model_type')!r}, expected {OFFICIAL_MODEL_TYPE!r}"
        )
    if official.get("use_sliding_window"):
        raise ConversionError("Qwen2 with sliding-window attention is not supported")
    fields = {k: official[k] for k in _TEXT_FIELDS if k in official}
    if not 0 <= image_token_id < official["vocab_size"]:
        raise ConversionError(f"image token id {image_token_id} is outside the vocabulary (size {official['vocab_size']})")
    rope = dict(official.get("rope_scaling") or {"rope_type": "default"})
    rope.setdefault("rope_type", rope.pop("type", None))  # pre-4.45 configs say "type"
    rope["rope_theta"] = official.get("rope_theta", 10000.0)
    moe_part = (official.get("moe_part") or "") if official.get("add_moe") else ""
    return EveConfig(
        **fields,
        rope_parameters=rope,
        qkv_bias=True,
        text_model_type="qwen2",
        patch_size=patch_size,
        dense_stride=dense_stride,
        pel_hidden_size=official.get("mm_hidden_size", 1024),
        image_token_id=image_token_id,
        decoupled=[g for g in DECOUPLABLE if MOE_PARTS[g] in moe_part],
        architectures=["EveForConditionalGeneration"],
    )


def config_to_official(config: EveConfig) -> dict:
    if config.text_model_type != "qwen2" or not config.qkv_bias:
        raise ConversionError(f"the official format is Qwen2-only; this model's text decoder is {config.text_model_type!r}")
    if config.head_dim * config.num_attention_heads != config.hidden_size:
        raise ConversionError("the official Qwen2 code derives head_dim = hidden_size / num_attention_heads")
    if (config.patch_size, config.dense_stride) != (16, 2):
        raise ConversionError(
            f"the official processor ({OFFICIAL_VISION_TOWER}) uses patch 16 / dense stride 2, "
            f"this model {config.patch_size} / {config.dense_stride}"
        )
    rope = dict(config.rope_parameters)
    theta = rope.pop("rope_theta")
    dtype = config.dtype
    official = {
        "architectures": ["EVEQwen2ForCausalLM"],
        "model_type": OFFICIAL_MODEL_TYPE,
        **{k: getattr(config, k) for k in _TEXT_FIELDS},
        "rope_theta": theta,
        "rope_scaling": None if rope.get("rope_type") == "default" else rope,
        "use_sliding_window": False,
        "add_moe": bool(config.decoupled),
        "moe_part": "-".join(part for g, part in MOE_PARTS.items() if g in config.decoupled),
        "mm_vision_tower": OFFICIAL_VISION_TOWER,
        "mm_hidden_size": config.pel_hidden_size,
        "tune_VE": True,
        "tune_LLM": True,
        "tune_MOE": bool(config.decoupled),
        "torch_dtype": str(dtype).removeprefix("torch.") if dtype is not None else None,
    }
    return official


def find_image_token_id(folder: str | os.PathLike) -> int | None:
    """The id of `<|image_pad|>` in the folder's tokenizer files, read as plain JSON."""
    folder = Path(folder)
    added = _read_json(folder / "added_tokens.json", {})
    if IMAGE_PAD in added:
        return int(added[IMAGE_PAD])
    for tid, tok in _read_json(folder / "tokenizer_config.json", {}).get("added_tokens_decoder", {}).items():
        if tok.get("content") == IMAGE_PAD:
            return int(tid)
    tokenizer = _read_json(folder / "tokenizer.json", {})
    for tok in tokenizer.get("added_tokens", []):
        if tok.get("content") == IMAGE_PAD:
            return int(tok["id"])
    vocab = (tokenizer.get("model") or {}).get("vocab")
    if isinstance(vocab, dict) and IMAGE_PAD in vocab:
        return int(vocab[IMAGE_PAD])
    return None


# ------------------------------------------------------------------------------------ conversion


def official_to_eve(
    src_dir: str | os.PathLike,
    dst_dir: str | os.PathLike,
    image_token_id: int | None = None,
    dtype: torch.dtype | str | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> EveConfig:
    """Convert an official EVEv2 checkpoint folder into one `EveForConditionalGeneration.from_pretrained`
    loads. `image_token_id` defaults to the id of `<|image_pad|>` in the source tokenizer files
    (the official placeholder, -200, is not a vocabulary row). `dtype` ("bf16", "fp16", "fp32" or a
    torch dtype) casts floating-point tensors; default: keep them as stored."""
    src, dst = Path(src_dir), Path(dst_dir)
    official = _read_config(src)
    if image_token_id is None:
        image_token_id = find_image_token_id(src)
        if image_token_id is None:
            raise ConversionError(
                f"{src} has no tokenizer file defining {IMAGE_PAD}; pass the image token id (--image-token-id)"
            )
    processor = _read_json(src / "preprocessor_config.json", {})
    config = config_from_official(
        official, image_token_id, processor.get("patch_stride", 16), processor.get("dense_stride", 2)
    )
    if isinstance(dtype, str):
        dtype = torch_dtype(dtype)
    if dtype is not None or official.get("torch_dtype"):
        config.dtype = str(dtype or official["torch_dtype"]).removeprefix("torch.")
    expected = {to_official_name(n): s for n, s in expected_shapes(config).items()}
    _convert_tensors(src, dst, expected, from_official_name, dtype, max_shard_bytes)
    config.save_pretrained(dst)
    _copy_files(src, dst, (*TOKENIZER_FILES, "generation_config.json", "preprocessor_config.json"))
    return config


def eve_to_official(
    src_dir: str | os.PathLike, dst_dir: str | os.PathLike, max_shard_bytes: int = MAX_SHARD_BYTES
) -> dict:
    """Convert one of our checkpoint folders into the official layout and config (returned)."""
    src, dst = Path(src_dir), Path(dst_dir)
    ours = _read_config(src)
    if ours.get("model_type") != EveConfig.model_type:
        raise ConversionError(f"{src}/config.json has model_type {ours.get('model_type')!r}, expected 'eve'")
    config = EveConfig.from_pretrained(src)
    official = config_to_official(config)
    _convert_tensors(src, dst, expected_shapes(config), to_official_name, None, max_shard_bytes)
    (dst / "config.json").write_text(json.dumps(official, indent=2) + "\n")
    _copy_files(src, dst, (*TOKENIZER_FILES, "generation_config.json"))
    return official


def _convert_tensors(src: Path, dst: Path, expected: dict, rename, dtype, max_shard_bytes: int) -> None:
    """Check the source tensors against `expected` (source names), then write them renamed."""
    weight_map = _weight_map(src)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ConversionError(f"destination {dst} must be a new or empty folder")
    with ExitStack() as stack:
        files = {f: stack.enter_context(safe_open(src / f, framework="pt")) for f in sorted(set(weight_map.values()))}
        found = {name: tuple(files[f].get_slice(name).get_shape()) for name, f in weight_map.items()}
        _check(src, expected, found)
        dst.mkdir(parents=True, exist_ok=True)
        writer = _ShardWriter(dst, max_shard_bytes)
        for name, f in weight_map.items():
            tensor = files[f].get_tensor(name)
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            writer.add(rename(name), tensor)
        writer.close()


def _weight_map(src: Path) -> dict[str, str]:
    index = src / "model.safetensors.index.json"
    if index.exists():
        return _read_json(index)["weight_map"]
    if (src / "model.safetensors").exists():
        with safe_open(src / "model.safetensors", framework="pt") as f:
            return {name: "model.safetensors" for name in f.keys()}
    raise ConversionError(f"{src} holds neither model.safetensors nor model.safetensors.index.json")


def _check(src: Path, expected: dict, found: dict) -> None:
    problems = []
    missing = [f"{n} {list(expected[n])}" for n in expected if n not in found]
    unexpected = [f"{n} {list(found[n])}" for n in found if n not in expected]
    wrong = [
        f"{n} (expected {list(expected[n])}, found {list(found[n])})"
        for n in expected if n in found and found[n] != expected[n]
    ]
    for kind, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            more = f", ... and {len(items) - _MAX_NAMED} more" if len(items) > _MAX_NAMED else ""
            problems.append(f"{len(items)} {kind}: {', '.join(items[:_MAX_NAMED])}{more}")
    if problems:
        raise CheckpointMismatchError(f"{src} does not match its config.json: " + "; ".join(problems))


class _ShardWriter:
    """Writes tensors into shards of at most `max_bytes` (a larger tensor gets a shard of its
    own), named like transformers' once their count is known, with an index when there are several."""

    def __init__(self, dst: Path, max_bytes: int):
        self.dst, self.max_bytes = dst, max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[tuple[Path, list[str]]] = []
        self.total = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self._flush()
        self.pending[name] = tensor.contiguous()
        self.pending_bytes += size
        self.total += size

    def _flush(self) -> None:
        path = self.dst / f"model-shard-{len(self.shards)}.tmp"
        save_file(self.pending, path, metadata={"format": "pt"})
        self.shards.append((path, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> None:
        self._flush()
        if len(self.shards) == 1:
            self.shards[0][0].rename(self.dst / "model.safetensors")
            return
        weight_map = {}
        for i, (path, names) in enumerate(self.shards, 1):
            name = f"model-{i:05d}-of-{len(self.shards):05d}.safetensors"
            path.rename(self.dst / name)
            weight_map.update(dict.fromkeys(names, name))
        index = {"metadata": {"total_size": self.total}, "weight_map": weight_map}
        (self.dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


# --------------------------------------------------------------------------------------- helpers


def _read_json(path: Path, default=None):
    if default is not None and not path.exists():
        return default
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConversionError(f"cannot read {path}: {e}") from None


def _read_config(src: Path) -> dict:
    if not (src / "config.json").is_file():
        raise ConversionError(f"{src} is not a checkpoint folder (no config.json)")
    return _read_json(src / "config.json")


def _copy_files(src: Path, dst: Path, names) -> None:
    for name in names:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
