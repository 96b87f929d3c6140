"""Generator transfer: class-conditional VAEs and GANs that take their classes from a classifier's
penultimate-activation distribution (``penact generate``)."""
from .families import FAMILIES, LatentSpace
from .metrics import Judges, Scores, frechet_distance
from .trainers import MODELS, TrainConfig, train_model

__all__ = ["FAMILIES", "LatentSpace", "Judges", "Scores", "frechet_distance", "MODELS", "TrainConfig", "train_model"]
