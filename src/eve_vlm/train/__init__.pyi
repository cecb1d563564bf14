from .build import init_vision, init_vision_folder, load_model
from .metrics import plot
from .recipe import Recipe, RecipeError, load_recipe
from .trainer import completed_summary, train, train_or_reuse
