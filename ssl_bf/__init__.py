"""ssl-bf: MoCo-v2/v3 self-supervised pretraining with BatchFormer, evaluation and SLURM launching."""

__version__ = "0.1.0"
