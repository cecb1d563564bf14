from .chat import (
    EVE_SYSTEM, IGNORE_INDEX, IMAGE_MARKER, IMAGE_PARTS, ROLES, TEMPLATES, normalize_messages, render,
    tokenize_with_labels,
)
from .image import EveImageProcessor, ImageReadError, load_image, target_size
from .processor import EveProcessor
from .tokenizers import ensure_image_token, load_tokenizer, qwen_tokenizer, save_tokenizer_folder, smollm2_tokenizer
