"""Training: recipes, stages (freezing, vision-copy init), FSDP2, checkpoints, metrics."""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
