from .app import ApiError, Limits, create_app
from .batcher import Batcher, QueueFull
