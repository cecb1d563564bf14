"""Images, tokenizers, chat templates and the processor that turns them into model inputs."""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
