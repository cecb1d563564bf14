"""vLLM plugin: `vllm serve EVE_FOLDER` and `vllm.LLM(EVE_FOLDER)` for eve models.

vLLM calls `register` (entry point group `vllm.general_plugins`) in every one of its processes,
before it reads the model's config. The model module itself is named, not imported: vLLM loads it
only in the processes that build the model.
"""

ARCHITECTURE = "EveForConditionalGeneration"


def register() -> None:
    from vllm import ModelRegistry

    # EveConfig and eve's processor reach transformers' Auto classes through this import, so
    # vLLM's AutoConfig / AutoProcessor calls find them.
    import eve_vlm.model  # noqa: F401

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, f"{__name__}.model:{ARCHITECTURE}")
