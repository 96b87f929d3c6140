"""Knowledge distillation with the teacher's distribution of penultimate activations: the trainer
(``Distiller``), input synthesis from sampled activations, transfer sets, and the benchmarks
(digits; MNIST on DAFL's protocol)."""
from .synthesis import random_translate, synthesize_inputs, total_variation
from .trainer import DistillConfig, Distiller, Pool, kd_loss, parse_method
from .transfer import TRANSFER_SETS, TransferSet, corrupt, transfer_images, transfer_set

__all__ = ["DistillConfig", "Distiller", "Pool", "kd_loss", "parse_method", "random_translate", "synthesize_inputs",
           "total_variation", "TRANSFER_SETS", "TransferSet", "corrupt", "transfer_images", "transfer_set"]
