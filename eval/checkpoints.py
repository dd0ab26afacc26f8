"""Checkpoints given to the evaluation commands: read safely, checked for shape, one clear error.

`read_checkpoint` loads a file with `ssl_bf.io.load_tensors` (weights only, plus the named harmless
metadata types other projects pickle: nothing in a file is executed) and says what it is: a
training checkpoint (`model` state dict + `config`), an exported backbone (a state dict of tensors
with its `ssl-bf export` sidecar JSON), or a checkpoint of another project (`foreign_formats`:
MoCo, MoCo-v3, DINO, solo-learn, torchvision, timm...). `load_checked_encoder` then rebuilds the
encoder, turning a state dict that does not fit the model into the same kind of error. Every
error is a `CheckpointError` (a ValueError) naming the option and the file.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch

from ssl_bf.checkpoints.checkpoint import sidecar_path
from ssl_bf.cli_args import one_line

if TYPE_CHECKING:
    from .foreign_encoder import Imported
    from .import_choices import ImportChoices


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the option, the file and the problem."""


_EXPECTED = ("a training checkpoint (RUN/checkpoints/last.pt), a backbone written by `ssl-bf export`, or a "
             "checkpoint of another project (see `ssl-bf inspect`)")


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
    """Load `path` safely and check its shape; returns `(contents, kind)`, kind `training`,
    `backbone` or `foreign` (a checkpoint of another project). Raises CheckpointError naming `what`
    and the file."""
    opened = open_checkpoint(path, what)
    return opened.contents, opened.kind


@dataclass
class Opened:
    """A checkpoint file read and classified; `imported` is set for checkpoints of other projects."""
    kind: str  # training | backbone | foreign
    contents: dict
    imported: Optional["Imported"] = None


def open_checkpoint(path: str, what: str = "--checkpoint", choices: Optional["ImportChoices"] = None) -> Opened:
    """`read_checkpoint`, with the format of a foreign checkpoint detected and its architecture
    decided (`choices`: the ViT head count and the DINO network, else the format's conventions)."""
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
        ckpt = load_tensors(path, metadata_types=True)
    except UnreadableFileError as err:
        raise CheckpointError(f"{what} {one_line(err)}") from None
    except Exception as err:  # a parse boundary: torch.load on arbitrary bytes may raise anything
        raise CheckpointError(f"{what} {path} is not a torch checkpoint (corrupt, truncated or another "
                              f"format: {type(err).__name__}); give {_EXPECTED}") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{what} {path} holds a {type(ckpt).__name__}, not a checkpoint; give {_EXPECTED}")
    if "model" in ckpt or "config" in ckpt:
        return Opened("training", _check_training(ckpt, path, what))
    if any(k in ckpt for k in ("embeddings", "features", "feats", "labels")):
        raise CheckpointError(f"{what} {path} holds embeddings or labels, not model weights; give {_EXPECTED}")
    sidecar = sidecar_path(path)
    if _is_state_dict(ckpt) and os.path.isfile(sidecar):
        meta = _read_json(sidecar, path, what)
        if meta.get("format") in (None, "torchvision"):
            _check_sidecar(meta, sidecar, path, what)
            return Opened("backbone", ckpt)
        return Opened("foreign", ckpt, _import(ckpt, path, what, choices, meta))
    return Opened("foreign", ckpt, _import(ckpt, path, what, choices, None))


def _import(ckpt: dict, path: str, what: str, choices: Optional["ImportChoices"],
            sidecar: Optional[dict]) -> "Imported":
    from .foreign_encoder import RebuildError, resolve
    from .foreign_formats import UnknownFormatError, detect
    from .import_choices import ImportChoices

    choices = choices or ImportChoices()
    try:
        found = detect(ckpt, choices.dino_network or "teacher")
        if choices.dino_network is not None and found.format != "dino":
            raise CheckpointError(f"--dino-network is for DINO training checkpoints ({{student, teacher, ...}}); "
                                  f"{what} {path} is a {found.format} checkpoint with one network")
        return resolve(found, choices.vit_heads, sidecar)
    except UnknownFormatError as err:
        hint = ""
        if _is_state_dict(ckpt):
            hint = (f"; if it is a backbone written by `ssl-bf export`, {sidecar_path(path)} (written beside it) "
                    f"is missing: export it again")
        raise CheckpointError(f"{what} {path} is not a checkpoint ssl-bf can read: {one_line(err, limit=1500)}"
                              f"{hint}") from None
    except RebuildError as err:
        raise CheckpointError(f"{what} {path}: {one_line(err)}") from None


def _check_training(ckpt: dict, path: str, what: str) -> dict:
    from ssl_bf.config import ConfigError
    from ssl_bf.run_config import saved_config

    missing = [k for k in ("model", "config") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{what} {path} lacks {missing}: a training checkpoint holds 'model' and 'config'")
    if not _is_state_dict(ckpt["model"]):
        raise CheckpointError(f"{what} {path}: its 'model' is a {type(ckpt['model']).__name__}, not a state "
                              f"dict of tensors")
    if not isinstance(ckpt["config"], dict):
        raise CheckpointError(f"{what} {path}: its 'config' is a {type(ckpt['config']).__name__}, not a mapping")
    try:
        saved_config(ckpt["config"])
    except (ConfigError, ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"{what} {path}: its config is invalid ({one_line(err)})") from None
    return ckpt


def _read_json(meta_path: str, path: str, what: str) -> dict:
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{what} {path}: its sidecar {meta_path} is unreadable ({one_line(err)}); "
                              f"export the backbone again") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{what} {path}: its sidecar {meta_path} holds no mapping; export the backbone again")
    return meta


def _check_sidecar(meta: dict, meta_path: str, path: str, what: str) -> dict:
    """The `ssl-bf export` sidecar `X.json` of an exported backbone `X.pt`, checked."""
    from ssl_bf.config import ConfigError
    from ssl_bf.run_config import saved_config

    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{what} {path}: its sidecar {meta_path} holds no 'config' mapping; export the "
                              f"backbone again")
    try:
        saved_config(meta["config"])
    except (ConfigError, ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"{what} {path}: the config in {meta_path} is invalid ({one_line(err)})") from None
    return meta


def load_checked_encoder(path: str, features: str = "backbone", device: str | torch.device = "cpu",
                         what: str = "--checkpoint", choices: Optional["ImportChoices"] = None,
                         image_size: Optional[int] = None):
    """`ssl_bf.checkpoint.load_encoder` after `read_checkpoint`; returns `(module, config, contents)`.

    A state dict that does not fit the model its config describes (missing keys, wrong shapes)
    raises CheckpointError too. A checkpoint of another project is rebuilt from its weights
    (`foreign_encoder`); its module carries `input_spec` (channels, native size, normalisation)
    and `source_format`, and the config returned is the defaults with `augment.image_size` set
    (`image_size`, else the network's native size; a ViT's position embedding is resized to it).
    """
    from ssl_bf.checkpoints.checkpoint import load_encoder

    opened = open_checkpoint(path, what, choices)
    if opened.kind == "foreign":
        if features != "backbone":
            raise CheckpointError(f"--features {features}: {what} {path} is a {opened.imported.found.format} "
                                  f"checkpoint, of which ssl-bf loads the backbone only; use --features backbone")
        model, cfg = _foreign_encoder(opened.imported, path, what, image_size)
        return model.to(device), cfg, opened.contents
    refuse_import_choices(choices, what, path)
    ckpt, kind = opened.contents, opened.kind
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


def refuse_import_choices(choices: Optional["ImportChoices"], what: str, path: str) -> None:
    """--vit-heads / --dino-network given for an ssl-bf checkpoint: an error (its config says its network)."""
    if choices is not None and choices.given():
        raise CheckpointError(f"{' and '.join(choices.given())}: for checkpoints of other projects; {what} {path} "
                              f"is an ssl-bf checkpoint, whose config says its network")


def _foreign_encoder(imported: "Imported", path: str, what: str, image_size: Optional[int]):
    """The rebuilt encoder of a checkpoint of another project, and a config for the eval commands."""
    from ssl_bf.config import Config

    from .foreign_encoder import RebuildError, build

    try:
        model, missing = build(imported, image_size)
    except RebuildError as err:
        raise CheckpointError(f"{what} {path} ({imported.found.format}): {one_line(err)}") from None
    if missing:
        raise CheckpointError(f"{what} {path} ({imported.found.format}) lacks {len(missing)} tensors of the "
                              f"network its weights describe, e.g. {missing[:4]}; run `ssl-bf inspect {path}`")
    model.input_spec, model.source_format = imported.input, imported.found.format
    cfg = Config()
    cfg.augment.image_size = image_size or imported.input.image_size
    return model, cfg
