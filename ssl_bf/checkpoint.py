"""Checkpoints: atomic save, safe load (weights_only), find latest, export the backbone."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Optional

import torch

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (/proc); else set and restore."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def usual_file_mode() -> int:
    """0666 minus the umask: the mode `open()` would give (mkstemp's temp files are 0600)."""
    return 0o666 & ~_umask()


def atomic_write_bytes(path: str, write_fn) -> None:
    """Call `write_fn(file_object)` on a temp file beside `path`, then rename it over `path`
    (with the usual file mode, so run folders stay readable by a group as `open()` would make them)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), usual_file_mode())
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_atomic(obj: Any, path: str) -> None:
    """torch.save to a temp file, then rename: a crash never leaves a half-written `path`."""
    atomic_write_bytes(path, lambda f: torch.save(obj, f))


def write_json_atomic(obj: Any, path: str) -> None:
    atomic_write_bytes(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def load(path: str, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with `weights_only=True` (no arbitrary code from the file)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


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
