"""Checkpoints of other projects: which format a loaded file is, and which of its tensors are the
backbone.

`detect(obj)` looks at the keys and nesting of a loaded checkpoint and returns a `Found`: the
format, the backbone tensors renamed to one canonical layout (torchvision's ResNet names, or
timm's ViT names), and every other tensor under the reason it is dropped (head, momentum encoder,
queue, predictor, BatchFormer layer, the DINO student...). The formats and their layouts are
listed in `FORMATS` and explained in docs/checkpoint-formats.md.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

import torch

from ssl_bf.checkpoints.resnet_layout import is_torchvision_resnet
from ssl_bf.checkpoints.vit_layout import is_timm_vit

from .import_choices import DINO_NETWORKS

# format id -> what it looks like (printed when a file is none of them)
FORMATS = {
    "ssl-bf": "a run checkpoint (RUN/checkpoints/last.pt) or an `ssl-bf export` file with its JSON",
    "moco-v1": "facebookresearch/moco: {epoch, arch, state_dict, optimizer}, module.encoder_q.* with fc",
    "moco-v2": "facebookresearch/moco --mlp: as moco-v1 with fc.0 / fc.2",
    "moco-v3-resnet": "facebookresearch/moco-v3: module.base_encoder.* (projector in fc), "
                      "module.momentum_encoder.*, module.predictor.*",
    "moco-v3-vit": "facebookresearch/moco-v3 over a ViT (cls_token, pos_embed, blocks.i.*, projector in head)",
    "batchformer-mocov3": "zhihou7/BatchFormer's MoCo-v3: as moco-v3 with a BatchFormer layer "
                          "(encoder_layers.*) in the projector",
    "dino": "facebookresearch/dino: {student, teacher, optimizer, epoch, args, ...} (teacher used)",
    "solo-learn": "a Lightning .ckpt: state_dict with backbone.*, projector.*, momentum_*, classifier.*",
    "torchvision": "a plain torchvision ResNet state dict (also DINO's ResNet-50 backbone release); fc dropped",
    "timm-vit": "a plain ViT state dict in timm's names (DINO's ViT backbone releases, "
                "`ssl-bf export --format timm`)",
}

# (reason, pattern over the original key): the first match names why a tensor is not loaded
DROP_RULES = (
    ("BatchFormer layer", re.compile(r"(^|\.)(encoder_global|encoder_layers|batchformer)\.")),
    ("momentum encoder", re.compile(r"(^|\.)(encoder_k|momentum_encoder|momentum_backbone|momentum_projector)\.")),
    ("queue", re.compile(r"(^|\.)queue(_ptr)?$")),
    ("predictor", re.compile(r"(^|\.)predictor\.")),
    ("online classifier", re.compile(r"(^|\.)classifier\.")),
    ("head", re.compile(r"(^|\.)(fc|head|projector)(\.|$)")),
)


def drop_reason(key: str) -> str:
    """Why a tensor outside the backbone is not loaded (the first rule of DROP_RULES its key matches)."""
    return next((r for r, pattern in DROP_RULES if pattern.search(key)), "not part of the backbone")


_METADATA_KEYS = ("epoch", "arch", "global_step", "pytorch-lightning_version", "step")


class UnknownFormatError(ValueError):
    """A file whose layout matches none of `FORMATS`; the message lists them and the keys found."""


@dataclass
class Found:
    """A detected checkpoint: its backbone in a canonical layout and what was left out, and why."""

    format: str
    family: str  # resnet | vit
    backbone: dict[str, torch.Tensor]  # canonical name -> tensor
    source: dict[str, str]  # canonical name -> the key in the file
    dropped: dict[str, list[str]] = field(default_factory=dict)  # reason -> keys in the file
    notes: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)  # epoch, arch, ... as the file records them
    container: list[str] = field(default_factory=list)  # top-level entries of the file
    stem_padding: int = 1  # the 3x3 small-image stem's padding (solo-learn's CIFAR stem uses 2)


def is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def unknown_format(obj, why: str = "") -> UnknownFormatError:
    keys = sorted(map(str, obj))[:12] if isinstance(obj, dict) else []
    more = f" (+{len(obj) - 12} more)" if isinstance(obj, dict) and len(obj) > 12 else ""
    found = f"keys {keys}{more}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
    return UnknownFormatError(f"{why or 'an unknown checkpoint layout'}; found {found}. Known formats: "
                              f"{', '.join(FORMATS)} (DataParallel 'module.' prefixes are stripped; "
                              f"`ssl-bf inspect --help` and docs/checkpoint-formats.md describe each)")


def detect(obj, dino_network: str = "teacher") -> Found:
    """The format of a loaded checkpoint `obj` of another project; UnknownFormatError if none fits."""
    if not isinstance(obj, dict) or not obj:
        raise unknown_format(obj, "not a mapping of weights")
    metadata = {k: obj[k] for k in _METADATA_KEYS if isinstance(obj.get(k), (int, float, str))}
    container = sorted(map(str, obj))
    if is_state_dict(obj.get("teacher")) and is_state_dict(obj.get("student")):
        found = _dino(obj, dino_network)
    elif is_state_dict(obj.get("state_dict")):
        found = _from_state_dict(obj["state_dict"], "state_dict.", lightning="pytorch-lightning_version" in obj)
    elif is_state_dict(obj):
        found = _from_state_dict(obj, "", lightning=False)
        container = []
    else:
        raise unknown_format(obj, "no state dict of tensors at the top level or under 'state_dict', "
                                  "'teacher' or 'student'")
    found.metadata, found.container = metadata, container
    return found


def _from_state_dict(sd: dict, where: str, lightning: bool) -> Found:
    keys, stripped = _strip_dataparallel(sd)
    notes = [f"'module.' (DataParallel / DDP) prefix stripped from {where or 'the'} keys"] if stripped else []
    names = set(keys)
    if any(k.startswith("encoder_q.") for k in names):
        found = _moco_v1v2(keys)
    elif any(k.startswith("base_encoder.") for k in names):
        found = _moco_v3(keys)
    elif lightning or (any(k.startswith("backbone.") for k in names)
                       and any(k.startswith(("projector.", "classifier.", "momentum_backbone.")) for k in names)):
        found = _solo_learn(keys)
    elif is_torchvision_resnet(keys):
        found = _split("torchvision", "resnet", keys, "", {"head": "classifier (fc)"})
    elif is_timm_vit(keys):
        found = _split("timm-vit", "vit", keys, "", {"head": "classifier (head)"})
    else:
        raise unknown_format(keys, "a state dict whose keys match no known backbone layout")
    found.source = {k: where + sd_key for k, sd_key in ((k, _original(v, stripped)) for k, v in found.source.items())}
    found.dropped = {r: [where + _original(k, stripped) for k in ks] for r, ks in found.dropped.items()}
    found.notes = notes + found.notes
    return found


def _original(key: str, stripped: bool) -> str:
    return "module." + key if stripped else key


def _strip_dataparallel(sd: dict) -> tuple[dict, bool]:
    """`sd` without the `module.` prefix DataParallel and DDP add, when every key has it."""
    if all(k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}, True
    return dict(sd), False


def _family(sub: dict) -> str:
    return "vit" if is_timm_vit(sub) else "resnet"


def _split(fmt: str, family: str, keys: dict, prefix: str, rename: Optional[dict] = None) -> Found:
    """Keep the tensors under `prefix` (minus the family's head: `fc.` for ResNets, `head.` for
    ViTs) as the backbone; file every other tensor under its drop reason."""
    head = "fc" if family == "resnet" else "head"
    backbone, source, dropped = {}, {}, {}
    for key, value in keys.items():
        name = key[len(prefix):] if key.startswith(prefix) else None
        if name is not None and not re.match(rf"{head}(\.|$)", name) and not _BF_INSIDE.search(name):
            backbone[name], source[name] = value, key
            continue
        reason = drop_reason(key)
        reason = (rename or {}).get(reason, reason)
        dropped.setdefault(reason, []).append(key)
    return Found(fmt, family, backbone, source, dropped)


_BF_INSIDE = re.compile(r"(^|\.)encoder_layers\.")


def _moco_v1v2(keys: dict) -> Found:
    version = "moco-v2" if "encoder_q.fc.0.weight" in keys else "moco-v1"
    found = _split(version, "resnet", keys, "encoder_q.", {"head": "projection head (fc)"})
    if "encoder_q.fc.0.weight" in keys:
        found.notes.append("MLP head fc.0 / fc.2 (MoCo v2's --mlp) dropped")
    return found


def _moco_v3(keys: dict) -> Found:
    sub = {k[len("base_encoder."):]: v for k, v in keys.items() if k.startswith("base_encoder.")}
    family = _family(sub)
    batchformer = any(_BF_INSIDE.search(k) or k.startswith("encoder_global.") for k in keys)
    fmt = "batchformer-mocov3" if batchformer else f"moco-v3-{family}"
    head = "fc" if family == "resnet" else "head"
    found = _split(fmt, family, keys, "base_encoder.", {"head": f"projector ({head})"})
    if batchformer:
        found.notes.append("the BatchFormer authors' TransformerDecorator (encoder_layers) sits in front of the "
                           "projector; it is training-only and dropped")
    return found


def _solo_learn(keys: dict) -> Found:
    sub = {k[len("backbone."):]: v for k, v in keys.items() if k.startswith("backbone.")}
    if not sub:
        raise unknown_format(keys, "a Lightning checkpoint without backbone.* tensors")
    found = _split("solo-learn", _family(sub), keys, "backbone.", {"head": "projector"})
    if found.family == "resnet" and sub.get("conv1.weight") is not None and sub["conv1.weight"].shape[-1] == 3:
        found.stem_padding = 2
        found.notes.append("3x3 conv1: solo-learn's CIFAR stem (stride 1, padding 2, no max-pool)")
    return found


def _dino(obj: dict, network: str) -> Found:
    if network not in DINO_NETWORKS:
        raise ValueError(f"DINO network must be 'teacher' or 'student', not {network!r}")
    other = "student" if network == "teacher" else "teacher"
    keys, stripped = _strip_dataparallel(obj[network])
    sub = {k[len("backbone."):]: v for k, v in keys.items() if k.startswith("backbone.")}
    if not sub:
        raise unknown_format(obj, f"a DINO checkpoint whose {network} has no backbone.* tensors")
    found = _split("dino", _family(sub), keys, "backbone.", {"head": "DINO head"})
    where = f"{network}."
    found.source = {k: where + _original(v, stripped) for k, v in found.source.items()}
    found.dropped = {r: [where + _original(k, stripped) for k in ks] for r, ks in found.dropped.items()}
    found.dropped[f"{other} network (the {network} is used)"] = [f"{other}.{k}" for k in obj[other]]
    found.notes.append(f"the {network} network is used" + (" ('module.' and 'backbone.' stripped)" if stripped
                                                         else " ('backbone.' stripped)"))
    return found
