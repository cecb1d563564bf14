from .bad import BadEvent, BadSampleCounter, SkipBad, TooManyBadSamplesError
from .collate import Collator
from .llava import LlavaDataset, LlavaEncoder, load_image, parse_record
from .mixture import Mixture, Source
from .packing import PackingCollator, pack
from .sampler import LengthGroupedSampler, RandomSampler
