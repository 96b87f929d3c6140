"""Generator transfer: class-conditional VAEs and GANs that take their classes from a classifier's
penultimate-activation distribution (``penact generate``)."""
from .families import FAMILIES, LatentSpace
from .metrics import Judges, Scores, frechet_distance
from .trainers import MODELS, TrainConfig, train_model

__all__ = ["FAMILIES", "MODELS", "Judges", "LatentSpace", "Scores", "TrainConfig", "frechet_distance", "train_model"]
