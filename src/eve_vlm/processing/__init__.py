"""Images, tokenizers, chat templates and the processor that turns them into model inputs."""

from eve_vlm.processing.chat import (
    EVE_SYSTEM, IGNORE_INDEX, IMAGE_MARKER, IMAGE_PARTS, ROLES, TEMPLATES, normalize_messages, render,
    tokenize_with_labels,
)
from eve_vlm.processing.image import EveImageProcessor, ImageReadError, load_image, target_size
from eve_vlm.processing.processor import EveProcessor
from eve_vlm.processing.tokenizers import (
    ensure_image_token, load_tokenizer, qwen_tokenizer, save_tokenizer_folder, smollm2_tokenizer,
)


def register_auto_classes() -> None:
    """Make AutoImageProcessor / AutoProcessor load eve folders (model_type "eve"), no remote code."""
    from transformers import AutoImageProcessor, AutoProcessor

    from eve_vlm.model.config import EveConfig

    AutoImageProcessor.register(
        EveConfig, image_processor_classes={"pil": EveImageProcessor, "torchvision": EveImageProcessor}, exist_ok=True)
    AutoProcessor.register(EveConfig, EveProcessor, exist_ok=True)


register_auto_classes()

__all__ = [
    "EVE_SYSTEM", "IGNORE_INDEX", "IMAGE_MARKER", "IMAGE_PARTS", "ROLES", "TEMPLATES", "EveImageProcessor",
    "EveProcessor", "ImageReadError", "ensure_image_token", "load_image", "load_tokenizer", "normalize_messages",
    "qwen_tokenizer", "register_auto_classes", "render", "save_tokenizer_folder", "smollm2_tokenizer", "target_size",
    "tokenize_with_labels",
]
