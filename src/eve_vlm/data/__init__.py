"""Training data: LLaVA JSON/JSONL readers, mixtures, samplers, batching and packing, bad-sample
accounting, and generators for the offline data sets (easy-VQA export, synthetic text-in-image)."""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
