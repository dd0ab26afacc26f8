"""Training checkpoints: where they live, safe load (weights_only), export and rebuild the encoder."""
from __future__ import annotations

import json
import os
from typing import Optional

import torch

from ..atomic_write import write_json, write_pickle, write_torch
from ..file_kinds import FileKind
from ..io import load_tensors
from ..outputs import check_output

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"


def sidecar_path(path: str) -> str:
    """The JSON written beside an exported backbone `X.pt` by `ssl-bf export`: `X.json`."""
    return os.path.splitext(path)[0] + ".json"


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


class ExportError(ValueError):
    """A checkpoint `ssl-bf export` cannot export (the message names the file and the fix)."""


def _training_state(path: str) -> dict:
    """The loaded training checkpoint at `path`, checked to hold what an export needs."""
    if os.path.isdir(path):
        raise ExportError(f"checkpoint {path} is a folder; give a training checkpoint (RUN/checkpoints/last.pt)")
    ckpt = load(path)
    if not isinstance(ckpt, dict):
        raise ExportError(f"{path} holds a {type(ckpt).__name__}, not a training checkpoint; give "
                          "RUN/checkpoints/last.pt")
    if "model" not in ckpt and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()) \
            and os.path.isfile(sidecar_path(path)):
        raise ExportError(f"{path} is an exported backbone already (written by `ssl-bf export`); give the "
                          "training checkpoint it came from (RUN/checkpoints/last.pt)")
    if not isinstance(ckpt.get("model"), dict):
        what = "has no 'model' state dict" if "model" not in ckpt else "has a 'model' that is not a state dict"
        raise ExportError(f"{path} is not a training checkpoint of ssl-bf pretrain (it {what}); give "
                          "RUN/checkpoints/last.pt")
    if not isinstance(ckpt.get("config"), dict):
        raise ExportError(f"{path} has no 'config' (the run's settings, needed to rebuild the backbone); give a "
                          "checkpoint written by ssl-bf pretrain")
    return ckpt


def export_backbone(checkpoint_path: str, out_path: str, fmt: str = "torchvision") -> dict:
    """Write the query backbone (no BatchFormer, no heads) in `fmt` (`export_formats`): torchvision
    (ssl-bf's state dict, the default), timm or detectron2.

    A sidecar `OUT.json` records the backbone config so `load_backbone` can rebuild it (timm,
    detectron2: also what those tools need, see `export_formats`). Both outputs pass the output
    guard before the checkpoint is read (`ssl_bf.outputs.check_output`: OutputError); ExportError
    for a checkpoint that cannot be exported, FileNotFoundError or io.UnreadableFileError for one
    that cannot be read.
    """
    from .export_formats import EXPORT_FORMATS, ExportFormatError, detectron2_export, timm_export

    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose from {', '.join(EXPORT_FORMATS)}")
    sidecar = sidecar_path(out_path)
    if os.path.abspath(sidecar) == os.path.abspath(out_path):
        raise ExportError(f"export OUT {out_path} ends in .json, the name of the config file written beside "
                          "the weights; give a .pt name")
    inputs = [checkpoint_path]  # its run folder's files are refused by the guard (ssl_bf/run_layout.py)
    kind = FileKind.PICKLE if fmt == "detectron2" else FileKind.TORCH
    check_output(out_path, kind, option="export OUT", inputs=inputs)
    check_output(sidecar, FileKind.JSON, option="export OUT's config file", inputs=inputs)
    ckpt = _training_state(checkpoint_path)
    state = backbone_state_dict(ckpt["model"])
    if not state:
        raise ExportError(f"{checkpoint_path} holds no backbone weights ('backbone.*' in 'model'); give a "
                          "checkpoint written by ssl-bf pretrain")
    meta = {"format": fmt, "config": ckpt["config"], "source": os.path.abspath(checkpoint_path),
            "in_channels": ckpt.get("in_channels", 3), "image_size": ckpt.get("image_size", 224),
            "epoch": ckpt.get("epoch"), "step": ckpt.get("step")}
    try:
        if fmt == "timm":
            out_state, extra = timm_export(state, ckpt["config"])
        elif fmt == "detectron2":
            out_state, extra = detectron2_export(state, ckpt["config"])
        else:
            out_state, extra = state, {}
    except (ExportFormatError, ValueError) as err:
        raise ExportError(f"{checkpoint_path}: {err}") from None
    meta.update(extra)
    if fmt == "detectron2":
        write_pickle(out_state, out_path, option="export OUT", inputs=inputs)
    else:  # timm's renamed tensors may be views: each is saved on its own
        write_torch({k: v.detach().clone() if isinstance(v, torch.Tensor) and fmt == "timm" else v
                     for k, v in out_state.items()}, out_path, option="export OUT", inputs=inputs)
    write_json(meta, sidecar, option="export OUT's config file", inputs=inputs)
    return meta


def load_encoder(path: str, features: str = "backbone", device: str | torch.device = "cpu"):
    """Rebuild the query encoder from a training checkpoint or an exported backbone.

    Returns `(module, config)`: the module maps a normalised float batch (N, C, H, W) to
    features (N, D), in eval mode. `features` is `backbone` or `projection` (the latter needs a
    training checkpoint). BatchFormer is never part of it.
    """
    from ..run_config import saved_config
    from ..models.registry import build_encoder

    ckpt = load(path)
    if "model" in ckpt and "config" in ckpt:
        cfg = saved_config(ckpt["config"])
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
        meta_path = sidecar_path(path)
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"{meta_path} (written by `ssl-bf export`) is needed to rebuild the backbone")
        with open(meta_path) as f:
            meta = json.load(f)
        cfg = saved_config(meta["config"])
        in_channels = meta.get("in_channels", 3)
        encoder = build_encoder(cfg, in_channels=in_channels, features="backbone", image_size=meta.get("image_size", 224))
        encoder.backbone.load_state_dict(ckpt, strict=True)
    return encoder.to(device).eval(), cfg
