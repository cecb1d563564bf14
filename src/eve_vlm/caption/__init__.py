"""Caption engine (DenseFusion++-style): vision experts -> facts -> a fuser -> dense captions.

    experts.py   the Expert interface, registry, per-image failure isolation
    ocr.py       Tesseract words / boxes / lines        layout.py  colours, regions, shapes
    pipeline.py  any transformers vision pipeline       fusers.py  rule / in-process model / endpoint
    engine.py    resumable, sharded, concurrent run     ray_mode.py  the same on Ray Data
    quality.py   fact recall and hallucination rate against known ground truth
"""

from .engine import run
from .experts import Expert, load_expert, register_expert, run_experts
from .fusers import PromptTemplate, RuleFuser, load_fuser

__all__ = ["Expert", "PromptTemplate", "RuleFuser", "load_expert", "load_fuser", "register_expert", "run",
           "run_experts"]
