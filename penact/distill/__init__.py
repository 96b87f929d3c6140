"""Knowledge distillation with the teacher's distribution of penultimate activations: the trainer
(``Distiller``), input synthesis from sampled activations, transfer sets, and the digits benchmark."""
from .synthesis import synthesize_inputs, total_variation
from .trainer import DistillConfig, Distiller, kd_loss, parse_method
from .transfer import TRANSFER_SETS, corrupt, transfer_images

__all__ = ["DistillConfig", "Distiller", "kd_loss", "parse_method", "synthesize_inputs", "total_variation",
           "TRANSFER_SETS", "corrupt", "transfer_images"]
