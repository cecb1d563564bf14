"""Register eve with transformers' Auto classes as soon as transformers is imported.

`import eve_vlm` must not import transformers (seconds), yet `import eve_vlm` followed by
`AutoModelForCausalLM.from_pretrained(eve_folder)` must work without remote code. So the
registration (importing `eve_vlm.model.modeling`) runs right after transformers' own import finishes, or at
once when transformers is already loaded.
"""

import importlib
import importlib.abc
import importlib.util
import sys


def _initializing(name: str) -> bool:
    return getattr(getattr(sys.modules.get(name), "__spec__", None), "_initializing", False)


def _register() -> None:
    # When one of our own modules is mid-import and imports transformers, registering now would
    # import that half-built module again; the model package registers the classes itself when
    # that chain reaches them (config.py, modeling.py).
    if not any(name.startswith("eve_vlm.") and _initializing(name) for name in list(sys.modules)):
        importlib.import_module("eve_vlm.model.modeling")


class _AfterTransformers(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None:  # not installed: the import fails as it would without us
            return None
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register()

        spec.loader.exec_module = exec_then_register
        return spec


def register_with_transformers() -> None:
    if "transformers" in sys.modules:
        _register()
    elif not any(isinstance(finder, _AfterTransformers) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterTransformers())
