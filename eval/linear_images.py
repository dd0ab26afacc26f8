"""Linear probes on augmented images through a frozen backbone: the `mocov2` and `mocov3` protocols.

- `mocov2`: frozen backbone in eval mode, linear layer N(0, 0.01); SGD lr 30, momentum 0.9,
  wd 0, 100 epochs, lr x0.1 at 60% and 80% of training, batch 256; RandomResizedCrop + flip
  for training, resize + centre crop for testing.
- `mocov3`: the same, but SGD lr 0.1 x batch/256, cosine, 90 epochs, batch 1024.
- `--bn-head` (MAE): a non-affine BatchNorm before the linear layer, so the lr does not depend
  on the feature scale.
The backbone's weights and buffers are checked to be bit-identical afterwards.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssl_bf.knn import LabelSpace, as_numpy
from .linear_common import LinearHead, ProbeResult, Recipe, space_values, topk_correct


class BackboneChangedError(RuntimeError):
    """The frozen backbone's weights or buffers changed during probing."""


# ----------------------------------------------------------------------------------------------
# Backbone sanity check
# ----------------------------------------------------------------------------------------------


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter and buffer (BN running stats included)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def check_unchanged(before: dict[str, torch.Tensor], model: nn.Module) -> None:
    """Raise BackboneChangedError unless `model`'s state equals the `before` snapshot exactly."""
    after = model.state_dict()
    changed = sorted(k for k in before if k not in after or not torch.equal(before[k], after[k].detach()))
    changed += sorted(k for k in after if k not in before)
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise BackboneChangedError(f"the frozen backbone changed during the linear probe: {shown}. "
                                   f"The probe must keep it in eval mode and off the optimiser.")


# ----------------------------------------------------------------------------------------------
# Image protocols: mocov2 / mocov3 (augmented training, frozen backbone)
# ----------------------------------------------------------------------------------------------


class ProbeTrainTransform(nn.Module):
    """uint8 (N, C, H, W) -> RandomResizedCrop(S, scale 0.08-1) + horizontal flip, normalised."""

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        import kornia.augmentation as K

        self.augment = nn.Sequential(K.RandomResizedCrop((image_size, image_size), scale=(0.08, 1.0)),
                                     K.RandomHorizontalFlip())
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.augment(images.float().div_(255))  # (N, C, S, S)
        return (x - self.mean) / self.std


def shuffled_batches(dataset, batch_size: int, generator: torch.Generator,
                     num_workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled (uint8 images, labels) batches, the last one possibly smaller."""
    if hasattr(dataset, "get_batch"):
        order = torch.randperm(len(dataset), generator=generator)
        for start in range(0, len(order), batch_size):
            yield dataset.get_batch(order[start:start + batch_size])
        return
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                         generator=generator, num_workers=num_workers)
    for images, labels in loader:
        yield images, torch.as_tensor(labels, dtype=torch.int64)


def probe_images(model: nn.Module, train_set, test_set, recipe: Recipe, image_size: int,
                 protocol: str = "mocov2", bn_head: bool = False, device: str | torch.device = "cpu",
                 num_workers: int = 4, seed: int = 0, amp: bool = True,
                 progress: bool = True) -> ProbeResult:
    """Train a linear head on a frozen `model` with augmented images; test with centre crops.

    `model` maps a normalised batch to features (N, D). It stays in eval mode with no gradient;
    afterwards its weights and buffers are checked to be unchanged (BackboneChangedError).
    """
    from tqdm.auto import tqdm

    from ssl_bf.augment import EvalTransform
    from ssl_bf.features import extract_features

    tic = time.perf_counter()
    dev = torch.device(device)
    torch.manual_seed(seed)
    model = model.to(dev).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    before = snapshot(model)
    space = LabelSpace.from_train(_dataset_labels(train_set), len(train_set.classes) or None)
    train_tf = ProbeTrainTransform(image_size, train_set.mean, train_set.std).to(dev)
    use_amp = amp and dev.type == "cuda"

    def features(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            return model(x).float()  # (B, D)

    dim = extract_features(model, train_set, EvalTransform(image_size, train_set.mean, train_set.std).to(dev), dev,
                           indices=torch.arange(min(2, len(train_set))), batch_size=2,
                           progress=False)[0].shape[1]
    head = LinearHead(dim, space.num_classes, bn=bn_head).to(dev)
    opt = torch.optim.SGD(head.parameters(), lr=recipe.peak_lr(), momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay)
    steps_per_epoch = math.ceil(len(train_set) / recipe.batch_size)
    total = recipe.epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(seed)
    step = 0
    bar = tqdm(total=total, desc=f"linear {protocol}", unit="step", disable=not progress)
    for _ in range(recipe.epochs):
        head.train()
        for images, labels in shuffled_batches(train_set, recipe.batch_size, gen, num_workers):
            for group in opt.param_groups:
                group["lr"] = recipe.lr_at(step / total)
            target = torch.from_numpy(space.encode(labels.numpy())).to(dev)
            loss = F.cross_entropy(head(features(train_tf(images.to(dev, non_blocking=True)))), target,
                                   ignore_index=-1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    check_unchanged(before, model)

    eval_tf = EvalTransform(image_size, test_set.mean, test_set.std).to(dev)
    feats, labels = extract_features(model, test_set, eval_tf, dev, batch_size=recipe.batch_size,
                                     num_workers=num_workers, progress=progress, desc="linear test")
    check_unchanged(before, model)
    head.eval()
    with torch.no_grad():
        logits = head(feats.to(dev)).cpu()
    t1, t5 = topk_correct(logits, torch.from_numpy(space.encode(labels.numpy())))
    hp = {**asdict(recipe), "used_lr": recipe.peak_lr(), "bn_head": bn_head, "image_size": image_size}
    hp["milestones"] = list(hp["milestones"])
    return ProbeResult(protocol, 100.0 * t1 / len(labels), 100.0 * t5 / len(labels), hp,
                       seconds=time.perf_counter() - tic, num_classes=space.num_classes,
                       head=head.cpu(), label_values=space_values(space))

def _dataset_labels(dataset) -> np.ndarray:
    if hasattr(dataset, "labels"):
        return as_numpy(dataset.labels).astype(np.int64)
    if hasattr(dataset, "samples"):
        return np.asarray([label for _, label in dataset.samples], dtype=np.int64)
    return np.asarray([dataset[i][1] for i in range(len(dataset))], dtype=np.int64)
