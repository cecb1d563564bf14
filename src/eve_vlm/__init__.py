"""eve-vlm: encoder-free vision-language models (EVEv2) in PyTorch.

`import eve_vlm` is cheap (no torch, no transformers): every package exposes its names lazily, so
`eve --help` and light users do not pay seconds of imports. What a user expects of the import still
holds: transformers' Auto classes load eve folders once transformers is imported (`auto.py`).
"""

import lazy_loader

from .auto import register_with_transformers

__version__ = "0.1.0"

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
register_with_transformers()
