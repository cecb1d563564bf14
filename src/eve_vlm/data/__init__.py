"""Training data: LLaVA JSON/JSONL readers, mixtures, samplers, batching and packing, bad-sample
accounting, and generators for the offline data sets (easy-VQA export, synthetic text-in-image)."""

from eve_vlm.data.bad import BadEvent, BadSampleCounter, SkipBad, TooManyBadSamplesError
from eve_vlm.data.collate import Collator
from eve_vlm.data.llava import LlavaDataset, LlavaEncoder, load_image, parse_record
from eve_vlm.data.mixture import Mixture, Source
from eve_vlm.data.packing import PackingCollator, pack
from eve_vlm.data.sampler import LengthGroupedSampler, RandomSampler

__all__ = [
    "BadEvent", "BadSampleCounter", "Collator", "LengthGroupedSampler", "LlavaDataset", "LlavaEncoder",
    "Mixture", "PackingCollator", "RandomSampler", "SkipBad", "Source",
    "TooManyBadSamplesError", "load_image", "pack", "parse_record",
]
