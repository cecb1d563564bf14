"""Training: recipes, stages (freezing, vision-copy init), FSDP2, checkpoints, metrics."""

from .build import init_vision, init_vision_folder, load_model
from .metrics import plot
from .recipe import Recipe, RecipeError, load_recipe
from .trainer import completed_summary, train, train_or_reuse

__all__ = ["Recipe", "RecipeError", "completed_summary", "init_vision", "init_vision_folder", "load_model",
           "load_recipe", "plot", "train", "train_or_reuse"]
