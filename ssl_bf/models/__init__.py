"""What a method is: MoCo-v2/v3, BatchFormer (v1 and v2), backbones, heads, losses, split BatchNorm."""
