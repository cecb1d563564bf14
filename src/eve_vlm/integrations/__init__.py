"""Adapters for third-party evaluation frameworks (imported only by those frameworks)."""


def lmms_eval_manifest():
    """Entry point of the `lmms_eval.models` group: registers `--model eve`.

    It runs while lmms-eval builds its model registry, so it only names the class; the adapter
    module (which imports torch and lmms-eval's base class) loads when the model is used."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="eve", simple_class_path="eve_vlm.integrations.lmms_eval.EveLmms")
