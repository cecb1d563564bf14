from .config import EveConfig
from .modeling import EveForConditionalGeneration, EveModel, EvePreTrainedModel
from .patch_embed import PatchEmbedding
from .variants import DECOUPLABLE
