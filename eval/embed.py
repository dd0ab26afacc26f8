"""Checkpoint -> embeddings file: frozen encoder, eval transform, batched on CPU or CUDA.

The encoder comes from `ssl_bf.checkpoint.load_encoder` (eval mode, never BatchFormer). Images
go through `EvalTransform`: resize + centre crop when larger than the eval size, only
normalisation at the native size (e.g. 28 px Fashion-MNIST, 32 px CIFAR). The extraction itself
is `ssl_bf.features.extract_features`; under torchrun or a plain srun (more than one process) every rank embeds its shard
and rank 0 alone builds the embeddings and writes the file.
"""
from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch
from torch import nn

from ssl_bf.devices import resolve_device, tune_for_fixed_shapes
from ssl_bf.knn.features import extract_features
from ssl_bf.run_layout import Owner

from .formats import Embeddings, make_embeddings, write_embeddings

if TYPE_CHECKING:
    from .import_choices import ImportChoices

FOLDER_EVAL_SIZE = 224  # image folders whose config says "native size" are centre-cropped to this
MAX_LISTED = 20  # unreadable images named one per line on stderr; the metadata lists them all


def resolve_data(data: str, root: Optional[str] = None) -> tuple[str, Optional[str]]:
    """`--data NAME_OR_PATH` -> (dataset name, root).

    A known name is used as is (with `root`). A file is a shard manifest (`shards`). A folder is
    `shards` when it holds a manifest.json, an `imagefolder` when it holds a train/, val/ or test/
    subfolder, else an unlabeled `folder`.
    """
    from ssl_bf.data import DATASET_NAMES

    if data in DATASET_NAMES:
        return data, root
    if os.path.isfile(data) or os.path.isfile(os.path.join(data, "manifest.json")):
        return "shards", data
    if os.path.isdir(data):
        splits = ("train", "val", "test")
        if any(os.path.isdir(os.path.join(data, s)) for s in splits):
            return "imagefolder", data
        return "folder", data
    raise ValueError(f"--data '{data}' is neither a dataset name ({', '.join(DATASET_NAMES)}) "
                     f"nor an existing folder")


def eval_image_size(config_size: int, dataset) -> int:
    """The evaluation crop: the run's `augment.image_size`, else the dataset's native size
    (image folders, decoded at `load_size`, default to 224)."""
    if config_size:
        return int(config_size)
    if hasattr(dataset, "get_batch"):
        return int(dataset.image_size)
    return min(FOLDER_EVAL_SIZE, int(dataset.image_size))


def embed(checkpoint: str, data: Optional[str] = None, split: str = "train", out: Optional[str] = None,
          features: str = "backbone", root: Optional[str] = None, batch_size: int = 256,
          device: str = "auto", dtype: str = "float32", normalise: bool = False,
          image_size: Optional[int] = None, num_workers: int = 4, save_paths: bool = True,
          subset: Optional[int] = None, progress: bool = True,
          encoder: Optional[tuple[nn.Module, object]] = None,
          choices: Optional[ImportChoices] = None, skip_unreadable: bool = False) -> Optional[Embeddings]:
    """Extract features of one split with a checkpoint's encoder; write `out` when given.

    Args:
        checkpoint: a training checkpoint (`RUN/checkpoints/last.pt`) or an exported backbone.
        data: dataset name or folder; None: the dataset in the checkpoint's config.
        split: train | test.
        features: backbone (the usual choice) or projection (the projector's output).
        dtype: stored precision, float32 or float16.
        normalise: L2-normalise the stored features (k-NN normalises anyway).
        image_size: eval crop size; None: the run's `augment.image_size` or the native size.
        encoder: `(module, config)` already loaded from `checkpoint` by `load_embedding_encoder`
            (several splits, one load); None: loaded here.
        choices: for a checkpoint of another project, its ViT head count and DINO network (default:
            its format's conventions).
        skip_unreadable: image folders: leave out the rows of images that cannot be read (listed on
            stderr and in the metadata key `unreadable_skipped`) instead of refusing the folder.
    Returns:
        The embeddings (also written to `out` atomically, with metadata). Under torchrun
        or a plain srun (more than one process) the process group is joined (left for the caller to destroy); rank 0
        returns the embeddings of every rank, the other ranks return None.
    Raises:
        ValueError (CheckpointError, DataError's siblings...) naming the file or option at fault;
        nothing is written then.
    """
    from ssl_bf import distributed as dist_utils
    from ssl_bf.data.augment import EvalTransform
    from ssl_bf.data import build_dataset

    dev = resolve_device(device)
    tune_for_fixed_shapes(dev)  # fixed-size eval crops
    dist_utils.init_distributed(dev)  # torchrun or srun: every task embeds its shard
    model, cfg = encoder if encoder is not None else load_embedding_encoder(checkpoint, features, dev, choices,
                                                                            image_size)
    model = model.to(dev)
    require_data(model, data, checkpoint)
    if data is None:
        name, root = cfg.data.name, root or cfg.data.root
    else:
        name, root = resolve_data(data, root)
    dataset = build_dataset(name, root=root, split=split, load_size=cfg.data.load_size,
                            skip_unreadable=skip_unreadable)
    take_subset(dataset, subset, split)
    adapted = fit_dataset(model, cfg, dataset, checkpoint)
    size = image_size or eval_image_size(cfg.augment.image_size, dataset)
    transform = EvalTransform(size, dataset.mean, dataset.std).to(dev)
    result = extract_features(model, dataset, transform, dev, batch_size=batch_size,
                              num_workers=num_workers if name in ("imagefolder", "folder", "shards") else 0,
                              progress=progress, desc=f"embed {split}")
    if result is None:  # another rank of a process group: rank 0 holds the rows and writes `out`
        return None
    feats, labels = result
    skipped = skipped_paths(dataset, result)
    bad = int((~torch.isfinite(feats).all(dim=1)).sum())
    if bad:
        raise ValueError(f"{checkpoint}: the encoder gives NaN or Inf features for {bad} of {len(feats)} "
                         f"{split} images (a diverged checkpoint?); nothing written")
    if normalise:
        feats = torch.nn.functional.normalize(feats, dim=1)
    paths = row_paths(dataset, result) if save_paths else None
    emb = make_embeddings(feats, labels, checkpoint=os.path.abspath(checkpoint), features=features,
                          dataset=name, split=split, classes=list(dataset.classes) or None,
                          normalized=normalise, image_paths=paths,
                          extra={"data_root": str(dataset.root), "image_size": str(size),
                                 **({"input_adapted": adapted} if adapted else {}),
                                 **({"unreadable_skipped": json.dumps(skipped)} if skipped else {}),
                                 **({"checkpoint_format": model.source_format}
                                    if getattr(model, "source_format", None) else {})})
    if out:
        write_embeddings(out, emb, dtype, option="--out", owner=Owner.EMBED)
    return emb


def row_paths(dataset, result) -> Optional[list[str]]:
    """The image path of every extracted row (`result.positions`), for datasets of files."""
    if not hasattr(dataset, "samples"):
        return None
    return [dataset.samples[p][0] for p in result.positions.tolist()]


def skipped_paths(dataset, result) -> list[str]:
    """The files whose rows extraction left out as unreadable, each named on stderr with its reason.
    Refuses (UnreadableImageError) when no row is left."""
    if not len(result.skipped):
        return []
    if not len(result.positions):
        raise dataset.no_readable_image()
    from ssl_bf.data.decode import unreadable_reason

    paths = dataset.unreadable_paths(result.skipped.tolist())
    for path in paths[:MAX_LISTED]:
        print(f"ssl-bf: note: left out unreadable image {path} ({unreadable_reason(path) or 'unreadable'})",
              file=sys.stderr)
    more = f"; the first {MAX_LISTED} are named above" if len(paths) > MAX_LISTED else ""
    print(f"ssl-bf: note: left out {len(paths)} unreadable image(s) of {len(dataset)} in {dataset.root} "
          f"(--skip-unreadable); all are listed as 'unreadable_skipped' in the output's metadata and JSON{more}",
          file=sys.stderr)
    return paths


def load_embedding_encoder(checkpoint: str, features: str = "backbone", device: str | torch.device = "cpu",
                           choices: Optional[ImportChoices] = None,
                           image_size: Optional[int] = None) -> tuple[nn.Module, object]:
    """The frozen encoder of a checkpoint and its config, the checkpoint checked first
    (`ssl_bf.eval.checkpoints.load_checked_encoder`: CheckpointError naming the file)."""
    from .checkpoints import load_checked_encoder

    model, cfg, _ = load_checked_encoder(checkpoint, features=features, device=device, choices=choices,
                                         image_size=image_size)
    return model, cfg


def take_subset(dataset, subset: Optional[int], split: str) -> None:
    """Keep the first `subset` images of `dataset`; more than it holds is an error naming --subset."""
    if subset is None:
        return
    if subset < 1 or subset > len(dataset):
        raise ValueError(f"--subset {subset} is out of range: the {split} split of {dataset.name} "
                         f"({dataset.root}) has {len(dataset)} images; use 1 to {len(dataset)}")
    dataset.take_first(subset)


def fit_dataset(model: nn.Module, cfg, dataset, checkpoint: str) -> Optional[str]:
    """Make `dataset` give what the encoder expects; returns a note saying what changed, or None.

    - Gray images (Fashion-MNIST) for an encoder whose first layer takes 3 channels are repeated to
      3 channels (a view, no copy), normalised with the statistics the encoder was trained with
      (a checkpoint of another project: its `input_spec`; an ssl-bf run: its dataset's).
    - A checkpoint of another project is fed its own normalisation (ImageNet mean/std for the
      released ones) whatever the dataset.
    Any other channel mismatch is refused (ValueError naming the checkpoint).
    """
    from ssl_bf.data import DATASET_STATS

    spec = getattr(model, "input_spec", None)
    in_channels = _in_channels(model)
    notes = []
    if in_channels == 3 and dataset.num_channels == 1 and hasattr(dataset, "images"):
        dataset.images = dataset.images.expand(-1, 3, -1, -1)  # (N, 3, H, W) view of the gray channel
        dataset.num_channels = 3
        own = DATASET_STATS.get(cfg.data.name)
        if spec is None and own is not None and len(own[0]) == 3:
            dataset.mean, dataset.std = own
        else:
            dataset.mean, dataset.std = tuple(dataset.mean) * 3, tuple(dataset.std) * 3
        notes.append("gray images repeated to 3 channels")
    check_channels(model, dataset, checkpoint)
    if spec is not None and spec.mean is not None and len(spec.mean) == dataset.num_channels:
        dataset.mean, dataset.std = spec.mean, spec.std
        notes.append(f"normalised with the checkpoint's mean {list(spec.mean)} and std {list(spec.std)}")
    elif notes:
        notes.append(f"normalised with mean {list(dataset.mean)} and std {list(dataset.std)}")
    return "; ".join(notes) or None


def check_channels(model: nn.Module, dataset, checkpoint: str) -> None:
    """Refuse images whose channel count differs from what the encoder's first layer expects."""
    in_channels = _in_channels(model)
    if in_channels is not None and in_channels != dataset.num_channels:
        raise ValueError(f"{checkpoint} expects {in_channels}-channel images but {dataset.name} "
                         f"({dataset.root}) has {dataset.num_channels} channels; give --data with "
                         f"{in_channels}-channel images")


def require_data(model: nn.Module, data: Optional[str], checkpoint: str) -> None:
    """A checkpoint of another project records no dataset: `--data` must name one."""
    source = getattr(model, "source_format", None)
    if data is None and source is not None:
        from ssl_bf.checkpoints.checkpoint import sidecar_path

        hint = (f" (if it is an `ssl-bf export`, {sidecar_path(checkpoint)}, written beside it, is "
                f"missing)" if source == "torchvision" else "")
        raise ValueError(f"--data is needed: {checkpoint} is read as a {source} checkpoint, which records no "
                         f"dataset{hint}; e.g. --data imagefolder --root DIR, or --data fashion-mnist")


def _in_channels(model: nn.Module) -> Optional[int]:
    """Input channels of the first convolution (or patch projection), if there is one."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return None


class _Images:
    """An in-memory uint8 image tensor seen as a dataset with `get_batch` (labels all 0)."""

    def __init__(self, images: torch.Tensor):
        self.images = images  # (N, C, H, W) uint8

    def __len__(self) -> int:
        return len(self.images)

    def get_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[indices], torch.zeros(len(indices), dtype=torch.int64)


def embed_arrays(model: nn.Module, images: torch.Tensor, transform: nn.Module,
                 batch_size: int = 512, device: str | torch.device = "cpu") -> Optional[np.ndarray]:
    """Features (N, D) float32 of an in-memory uint8 image tensor; a helper for tests and probes.

    Under a process group the ranks share the work and only rank 0 gets the array (others None).
    """
    dev = torch.device(device)
    result = extract_features(model, _Images(images), transform.to(dev), dev, batch_size=batch_size,
                              progress=False)
    return None if result is None else result[0].numpy()
