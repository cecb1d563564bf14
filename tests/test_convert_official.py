"""Official EVEv2 checkpoint <-> eve-vlm conversion, on tiny random models.

The official folders are written by a hand-made writer that follows the reference (§8), not by
the converter under test, so a naming mistake in the converter cannot cancel itself out.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from eve_vlm.cli import main
from eve_vlm.convert.official import eve_to_official, official_to_eve
from eve_vlm.errors import CheckpointMismatchError, ConversionError
from eve_vlm.model.config import EveConfig
from eve_vlm.model.modeling import EveForConditionalGeneration

IMAGE_ID = 150
EVE_BIN = Path(sys.executable).parent / "eve"
PEL_NAMES = {
    "model.patch_embed.conv1.weight": "model.vision_tower.patch_embedding.0.weight",
    "model.patch_embed.conv1.bias": "model.vision_tower.patch_embedding.0.bias",
    "model.patch_embed.conv2.weight": "model.vision_tower.patch_embedding.2.weight",
    "model.patch_embed.conv2.bias": "model.vision_tower.patch_embedding.2.bias",
    "model.patch_embed.class_embedding": "model.vision_tower.class_embedding",
    "model.patch_embed.split_embedding": "model.vision_tower.split_embedding",
}
MOE_PART = {("attention", "ffn", "norm"): "layernorm-self_attn-mlp", ("ffn",): "mlp"}


def tiny_model(decoupled=("attention", "norm", "ffn"), tie=False, seed=0):
    torch.manual_seed(seed)
    cfg = EveConfig(
        vocab_size=160, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rope_theta=1e4, image_token_id=IMAGE_ID, pel_hidden_size=32,
        decoupled=list(decoupled), tie_word_embeddings=tie, bos_token_id=151, eos_token_id=152, pad_token_id=151,
    )
    return EveForConditionalGeneration(cfg).eval()


def official_name(name: str) -> str:
    if name in PEL_NAMES:
        return PEL_NAMES[name]
    for ours, theirs in (
        ("self_attn.vision_", "self_attn.moe_"), (".vision_mlp.", ".moe_mlp."),
        (".vision_input_layernorm.", ".moe_input_layernorm."),
        (".vision_post_attention_layernorm.", ".moe_post_attention_layernorm."),
    ):
        name = name.replace(ours, theirs)
    assert "vision_" not in name
    return name


def write_official(model, folder: Path, shards=1, tokenizer=True, edit=None) -> dict[str, torch.Tensor]:
    """Write `model` as an official checkpoint; `edit(tensors)` may tamper with the tensors first."""
    cfg = model.config
    tensors = {official_name(k): v.clone() for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        del tensors["lm_head.weight"]
    if edit:
        edit(tensors)
    folder.mkdir(parents=True)
    names = list(tensors)
    if shards == 1:
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    else:
        weight_map = {}
        for i in range(shards):
            file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = names[i::shards]
            save_file({n: tensors[n] for n in part}, folder / file, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(part, file))
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = {
        "architectures": ["EVEQwen2ForCausalLM"], "model_type": "eve-qwen2", "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers, "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads, "hidden_act": "silu", "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": 1e4, "max_position_embeddings": 32768, "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": 151, "eos_token_id": 152, "pad_token_id": 151, "torch_dtype": "float32",
        "use_sliding_window": False, "sliding_window": 4096, "max_window_layers": 2, "use_cache": True,
        "add_moe": True, "moe_part": MOE_PART[tuple(sorted(cfg.decoupled))],
        "mm_vision_tower": "openai/eve-anyratio-res1600-patch16", "mm_hidden_size": cfg.pel_hidden_size,
        "tune_VE": True, "tune_LLM": True, "tune_MOE": True, "vision_tower_lr": 1e-5,
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [152, 151], "do_sample": False}))
    if tokenizer:
        (folder / "added_tokens.json").write_text(json.dumps({"<|endoftext|>": 151, "<|image_pad|>": IMAGE_ID}))
    return tensors


def load(folder: Path) -> EveForConditionalGeneration:
    model, info = EveForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), info  # missing / unexpected / mismatched keys
    return model.eval()


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def image_text_logits(model):
    torch.manual_seed(1)
    image = torch.randn(3, 64, 96)
    n = model.model.patch_embed.num_tokens(64, 96)
    ids = torch.tensor([[3, 4, 5] + [IMAGE_ID] * n + [6, 7]])
    with torch.no_grad():
        return model(input_ids=ids, pixel_values=[image]).logits


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_official_to_eve_is_bit_exact(model, tmp_path):
    write_official(model, tmp_path / "official")
    config = official_to_eve(tmp_path / "official", tmp_path / "eve")
    assert config.image_token_id == IMAGE_ID and config.decoupled == ["attention", "norm", "ffn"]
    assert json.loads((tmp_path / "eve/config.json").read_text())["architectures"] == ["EveForConditionalGeneration"]
    for name in ("added_tokens.json", "generation_config.json"):
        assert (tmp_path / "eve" / name).read_bytes() == (tmp_path / "official" / name).read_bytes()
    loaded = load(tmp_path / "eve")
    assert_same_weights(model, loaded)
    assert torch.equal(image_text_logits(model), image_text_logits(loaded))


def test_sharded_input_and_output(model, tmp_path):
    write_official(model, tmp_path / "official", shards=3)
    official_to_eve(tmp_path / "official", tmp_path / "eve", max_shard_bytes=200_000)
    index = json.loads((tmp_path / "eve/model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not (tmp_path / "eve/model.safetensors").exists()
    assert_same_weights(model, load(tmp_path / "eve"))


def test_eve_official_eve_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path / "eve")
    official = eve_to_official(tmp_path / "eve", tmp_path / "official")
    assert official["model_type"] == "eve-qwen2" and official["architectures"] == ["EVEQwen2ForCausalLM"]
    assert official["add_moe"] and official["moe_part"] == "layernorm-self_attn-mlp"
    assert official["mm_hidden_size"] == 32 and official["rope_theta"] == 1e4
    with safe_open(tmp_path / "official/model.safetensors", framework="pt") as f:
        assert set(f.keys()) == {official_name(k) for k in model.state_dict()}
    config = official_to_eve(tmp_path / "official", tmp_path / "back", image_token_id=IMAGE_ID)
    for field in ("vocab_size", "num_key_value_heads", "rope_parameters", "eos_token_id", "pel_hidden_size"):
        assert getattr(config, field) == getattr(model.config, field), field
    assert_same_weights(model, load(tmp_path / "back"))


def _drop(t):
    del t["model.layers.1.self_attn.moe_k_proj.bias"]


def _extra(t):
    t["model.vision_tower.patch_embedding.1.weight"] = torch.zeros(3)


def _reshape(t):
    t["model.layers.0.moe_mlp.up_proj.weight"] = torch.zeros(129, 64)


@pytest.mark.parametrize(
    "edit, name",
    [
        (_drop, "model.layers.1.self_attn.moe_k_proj.bias [32]"),
        (_extra, "model.vision_tower.patch_embedding.1.weight [3]"),
        (_reshape, "model.layers.0.moe_mlp.up_proj.weight (expected [128, 64], found [129, 64])"),
    ],
)
def test_mismatched_checkpoint_is_rejected(model, tmp_path, edit, name):
    write_official(model, tmp_path / "official", edit=edit)
    with pytest.raises(CheckpointMismatchError) as err:
        official_to_eve(tmp_path / "official", tmp_path / "eve")
    assert name in str(err.value)
    assert not (tmp_path / "eve").exists()


def test_image_token_from_tokenizer_json_or_required(model, tmp_path):
    write_official(model, tmp_path / "official", tokenizer=False)
    with pytest.raises(ConversionError, match="--image-token-id"):
        official_to_eve(tmp_path / "official", tmp_path / "eve")
    added = [{"id": 151, "content": "<|endoftext|>"}, {"id": 149, "content": "<|image_pad|>"}]
    (tmp_path / "official/tokenizer.json").write_text(json.dumps({"added_tokens": added, "model": {"vocab": {}}}))
    assert official_to_eve(tmp_path / "official", tmp_path / "eve").image_token_id == 149


def test_ffn_only_moe_part_and_tied_embeddings(tmp_path):
    model = tiny_model(decoupled=["ffn"], tie=True)
    tensors = write_official(model, tmp_path / "official")
    assert "lm_head.weight" not in tensors and "model.layers.0.moe_mlp.up_proj.weight" in tensors
    config = official_to_eve(tmp_path / "official", tmp_path / "eve")
    assert config.decoupled == ["ffn"] and config.tie_word_embeddings
    assert_same_weights(model, load(tmp_path / "eve"))
    assert eve_to_official(tmp_path / "eve", tmp_path / "back")["moe_part"] == "mlp"


def test_cli(model, tmp_path, capsys):
    with pytest.raises(SystemExit) as version:
        main(["--version"])
    assert version.value.code == 0 and capsys.readouterr().out.startswith("eve-vlm ")
    write_official(model, tmp_path / "good")
    write_official(model, tmp_path / "bad", edit=_drop)
    assert main(["convert", "official", str(tmp_path / "good"), str(tmp_path / "out"), "--dtype", "bf16"]) == 0
    with safe_open(tmp_path / "out/model.safetensors", framework="pt") as f:
        assert f.get_tensor("model.layers.0.vision_mlp.up_proj.weight").dtype == torch.bfloat16
    # The installed entry point, once (each run pays the torch/transformers import).
    run = subprocess.run([EVE_BIN, "convert", "official", tmp_path / "bad", tmp_path / "bad-out"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert run.stderr.startswith("eve: error:") and "model.layers.1.self_attn.moe_k_proj.bias" in run.stderr
