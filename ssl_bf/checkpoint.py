"""Training checkpoints: where they live, safe load (weights_only), export and rebuild the encoder."""
from __future__ import annotations

import json
import os
from typing import Optional

import torch

from .io import load_tensors, save_atomic, write_json_atomic

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"


def load(path: str, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with `weights_only=True` (no arbitrary code from the file)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return load_tensors(path, map_location)


def last_path(run_dir: str) -> str:
    return os.path.join(run_dir, CHECKPOINT_DIR, LAST)


def find_latest(run_dir: str) -> Optional[str]:
    """The checkpoint to resume from: RUN/checkpoints/last.pt if it exists (and loads)."""
    path = last_path(run_dir)
    return path if os.path.isfile(path) else None


def backbone_state_dict(model_state: dict) -> dict:
    """The `backbone.` part of a full model state dict (query encoder), keys stripped."""
    prefix = "backbone."
    return {k[len(prefix):]: v for k, v in model_state.items() if k.startswith(prefix)}


def export_backbone(checkpoint_path: str, out_path: str) -> dict:
    """Write the query backbone as a plain state dict (no BatchFormer, no heads).

    A sidecar `OUT.json` records the backbone config so `load_backbone` can rebuild it.
    """
    ckpt = load(checkpoint_path)
    state = backbone_state_dict(ckpt["model"])
    save_atomic(state, out_path)
    meta = {"config": ckpt["config"], "source": os.path.abspath(checkpoint_path),
            "in_channels": ckpt.get("in_channels", 3), "image_size": ckpt.get("image_size", 224),
            "epoch": ckpt.get("epoch"), "step": ckpt.get("step")}
    write_json_atomic(meta, os.path.splitext(out_path)[0] + ".json")
    return meta


def load_encoder(path: str, features: str = "backbone", device: str | torch.device = "cpu"):
    """Rebuild the query encoder from a training checkpoint or an exported backbone.

    Returns `(module, config)`: the module maps a normalised float batch (N, C, H, W) to
    features (N, D), in eval mode. `features` is `backbone` or `projection` (the latter needs a
    training checkpoint). BatchFormer is never part of it.
    """
    from .config import from_dict
    from .moco import build_encoder

    ckpt = load(path)
    if "model" in ckpt and "config" in ckpt:
        cfg = from_dict(ckpt["config"])
        state = ckpt["model"]
        encoder = build_encoder(cfg, in_channels=ckpt.get("in_channels", 3), features=features,
                                image_size=ckpt.get("image_size", 224))
        missing, unexpected = encoder.load_state_dict(
            {k: v for k, v in state.items() if k.split(".")[0] in dict(encoder.named_children())},
            strict=False)
        if missing:
            raise RuntimeError(f"{path}: checkpoint lacks weights for {missing[:5]}")
    else:
        if features != "backbone":
            raise ValueError(f"{path} is an exported backbone; only features='backbone' is available")
        meta_path = os.path.splitext(path)[0] + ".json"
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"{meta_path} (written by `ssl-bf export`) is needed to rebuild the backbone")
        with open(meta_path) as f:
            meta = json.load(f)
        cfg = from_dict(meta["config"])
        in_channels = meta.get("in_channels", 3)
        encoder = build_encoder(cfg, in_channels=in_channels, features="backbone", image_size=meta.get("image_size", 224))
        encoder.backbone.load_state_dict(ckpt, strict=True)
    return encoder.to(device).eval(), cfg
