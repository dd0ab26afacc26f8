"""Training checkpoints on disk: where they live, safe loading, export formats, ResNet/ViT key layouts."""
