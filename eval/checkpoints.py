"""Checkpoints given to the evaluation commands: read safely, checked for shape, one clear error.

`read_checkpoint` loads a file with `ssl_bf.io.load_tensors` (weights only: nothing in a file is
executed) and checks it is a training checkpoint (`model` state dict + `config`) or an exported
backbone (a state dict of tensors with its `ssl-bf export` sidecar JSON). `load_checked_encoder`
then rebuilds the encoder, turning a state dict that does not fit the model into the same kind of
error. Every error is a `CheckpointError` (a ValueError) naming the option and the file.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import torch

from ssl_bf.cli_args import one_line


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the option, the file and the problem."""


_EXPECTED = "a training checkpoint (RUN/checkpoints/last.pt) or a backbone written by `ssl-bf export`"


def _looks_like(path: str) -> Optional[str]:
    """The kind of non-checkpoint file `path` is, guessed from its name or first bytes."""
    lower = path.lower()
    for ext, kind in ((".safetensors", "an embeddings file (safetensors)"), (".npy", "a numpy array file"),
                      (".npz", "a numpy archive"), (".json", "a JSON file"), (".yaml", "a YAML file"),
                      (".yml", "a YAML file")):
        if lower.endswith(ext):
            return kind
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if len(head) > 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 27):
        return "an embeddings file (safetensors)"
    if head.startswith(b"\x93NUMPY"):
        return "a numpy array file"
    return None


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def read_checkpoint(path: str, what: str = "--checkpoint") -> tuple[dict, str]:
    """Load `path` safely and check its shape; returns `(contents, kind)`, kind `training` or
    `backbone`. Raises CheckpointError naming `what` and the file."""
    from ssl_bf.io import UnreadableFileError, load_tensors

    if os.path.isdir(path):
        raise CheckpointError(f"{what} {path} is a folder; give the checkpoint file inside it "
                              f"(e.g. {os.path.join(path, 'checkpoints', 'last.pt')})")
    if not os.path.isfile(path):
        raise CheckpointError(f"{what} {path}: no such file; give {_EXPECTED}")
    kind = _looks_like(path)
    if kind and os.path.getsize(path) > 0:
        raise CheckpointError(f"{what} {path} is {kind}, not a checkpoint; give {_EXPECTED}")
    try:
        ckpt = load_tensors(path)
    except UnreadableFileError as err:
        raise CheckpointError(f"{what} {one_line(err)}") from None
    except Exception as err:  # a parse boundary: torch.load on arbitrary bytes may raise anything
        raise CheckpointError(f"{what} {path} is not a torch checkpoint (corrupt, truncated or another "
                              f"format: {type(err).__name__}); give {_EXPECTED}") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{what} {path} holds a {type(ckpt).__name__}, not a checkpoint; give {_EXPECTED}")
    if "model" in ckpt or "config" in ckpt:
        return _check_training(ckpt, path, what), "training"
    if any(k in ckpt for k in ("embeddings", "features", "feats", "labels")):
        raise CheckpointError(f"{what} {path} holds embeddings or labels, not model weights; give {_EXPECTED}")
    if not _is_state_dict(ckpt):
        raise CheckpointError(f"{what} {path} is neither a training checkpoint (no 'model' and 'config') nor "
                              f"an exported backbone (a state dict of tensors); found keys "
                              f"{sorted(map(str, ckpt))[:8]}")
    _read_sidecar(path, what)
    return ckpt, "backbone"


def _check_training(ckpt: dict, path: str, what: str) -> dict:
    from ssl_bf.config import ConfigError, from_dict

    missing = [k for k in ("model", "config") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{what} {path} lacks {missing}: a training checkpoint holds 'model' and 'config'")
    if not _is_state_dict(ckpt["model"]):
        raise CheckpointError(f"{what} {path}: its 'model' is a {type(ckpt['model']).__name__}, not a state "
                              f"dict of tensors")
    if not isinstance(ckpt["config"], dict):
        raise CheckpointError(f"{what} {path}: its 'config' is a {type(ckpt['config']).__name__}, not a mapping")
    try:
        from_dict(ckpt["config"])
    except (ConfigError, ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"{what} {path}: its config is invalid ({one_line(err)})") from None
    return ckpt


def _read_sidecar(path: str, what: str) -> dict:
    """The `ssl-bf export` sidecar `X.json` of an exported backbone `X.pt`, checked."""
    from ssl_bf.config import ConfigError, from_dict

    meta_path = os.path.splitext(path)[0] + ".json"
    if not os.path.isfile(meta_path):
        raise CheckpointError(f"{what} {path} looks like an exported backbone, but {meta_path} (written beside "
                              f"it by `ssl-bf export`) is missing; export the backbone again or give the "
                              f"training checkpoint")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{what} {path}: its sidecar {meta_path} is unreadable ({one_line(err)}); "
                              f"export the backbone again") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{what} {path}: its sidecar {meta_path} holds no 'config' mapping; export the "
                              f"backbone again")
    try:
        from_dict(meta["config"])
    except (ConfigError, ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"{what} {path}: the config in {meta_path} is invalid ({one_line(err)})") from None
    return meta


def load_checked_encoder(path: str, features: str = "backbone", device: str | torch.device = "cpu",
                         what: str = "--checkpoint"):
    """`ssl_bf.checkpoint.load_encoder` after `read_checkpoint`; returns `(module, config, contents)`.

    A state dict that does not fit the model its config describes (missing keys, wrong shapes)
    raises CheckpointError too.
    """
    from ssl_bf.checkpoint import load_encoder

    ckpt, kind = read_checkpoint(path, what)
    if kind == "backbone" and features != "backbone":
        raise CheckpointError(f"--features {features} needs a training checkpoint, but {what} {path} is an "
                              f"exported backbone (it has no projector); use --features backbone")
    try:
        model, cfg = load_encoder(path, features=features, device=device)
    except RuntimeError as err:  # load_state_dict: missing keys, size mismatches
        msg = one_line(err)
        raise CheckpointError(f"{what} {msg}" if msg.startswith(path) else
                              f"{what} {path} does not fit the model its config describes: {msg}") from None
    return model, cfg, ckpt
