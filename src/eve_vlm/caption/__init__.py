"""Caption engine (DenseFusion++-style): vision experts -> facts -> a fuser -> dense captions.

    experts.py   the Expert interface, registry, per-image failure isolation
    ocr.py       Tesseract words / boxes / lines        layout.py  colours, regions, shapes
    pipeline.py  any transformers vision pipeline       fusers.py  rule / in-process model / endpoint
    engine.py    resumable, sharded, concurrent run     ray_mode.py  the same on Ray Data
    quality.py   fact recall and hallucination rate against known ground truth
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
