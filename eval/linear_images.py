"""Linear probes on augmented images through a frozen backbone: the `mocov2` and `mocov3` protocols.

- `mocov2`: frozen backbone in eval mode, linear layer N(0, 0.01); SGD lr 30, momentum 0.9,
  wd 0, 100 epochs, lr x0.1 at 60% and 80% of training, batch 256; RandomResizedCrop + flip
  for training, resize + centre crop for testing.
- `mocov3`: the same, but SGD lr 0.1 x batch/256, cosine, 90 epochs, batch 1024.
- `--bn-head` (MAE): a non-affine BatchNorm before the linear layer, so the lr does not depend
  on the feature scale.
The backbone's weights and buffers are checked to be bit-identical afterwards. Under torchrun or
a multi-task SLURM job the global batch is split over the processes (linear_shards.py) and a
work folder makes the probe resumable after every epoch (linear_state.py).
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssl_bf import distributed as dist_utils
from ssl_bf.data.long_tail import class_counts
from ssl_bf.knn.vote import LabelSpace, as_numpy
from .linear_common import LinearHead, ProbeResult, Recipe, class_hits, space_values, topk_correct
from .linear_state import ProbeCheckpoint, weights_digest

LOSS_LOG_EVERY = 50  # steps between host read-backs of the loss (the progress bar's figure)


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
    """uint8 (N, C, H, W) -> RandomResizedCrop(S, scale 0.08-1) + horizontal flip, normalised.

    Under a process group each rank holds `rows` of a global batch of `global_size` images: the
    crop and flip parameters are drawn for the whole global batch (on every rank the draws one
    process makes) and this rank applies its rows' share (linear_shards.py).

    Every draw comes from torch's CPU generator, the one the probe's state saves, on any device:
    kornia moves its samplers to the device of `.to(device)`, so the ops are kept out of the module
    tree (a tuple) and their samplers stay on the CPU; the parameters go to the images' device.
    """

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        import kornia.augmentation as K

        self.size = image_size
        self.augment = (K.RandomResizedCrop((image_size, image_size), scale=(0.08, 1.0)),
                        K.RandomHorizontalFlip())  # not submodules: `.to(device)` leaves their samplers on the CPU
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, rows: Optional[slice] = None,
                global_size: Optional[int] = None) -> torch.Tensor:
        rows = rows or slice(0, len(images))
        n = global_size or len(images)
        x = images.float().div_(255)  # (b, C, H, W)
        for aug in self.augment:
            shape = torch.Size((n, *x.shape[1:]))
            params = aug.forward_parameters(shape)  # drawn for the whole global batch
            if len(x):
                mine = {k: v[rows] if k != "forward_input_shape" and torch.is_tensor(v) and v.dim() and len(v) == n
                        else v for k, v in params.items()}
                mine["forward_input_shape"] = torch.tensor(x.shape)
                x = aug(x, params=mine)
            elif aug is self.augment[0]:  # no rows here: only the draws, and the crop's output shape
                x = x.new_zeros((0, x.shape[1], self.size, self.size))
        return (x - self.mean) / self.std  # (b, C, S, S)


def probe_images(model: nn.Module, train_set, test_set, recipe: Recipe, image_size: int,
                 protocol: str = "mocov2", bn_head: bool = False, device: str | torch.device = "cpu",
                 num_workers: int = 4, seed: int = 0, amp: bool = True,
                 progress: bool = True, work_dir: Optional[str] = None,
                 identity: Optional[dict] = None, save_every: int = 500) -> ProbeResult:
    """Train a linear head on a frozen `model` with augmented images; test with centre crops.

    `model` maps a normalised batch to features (N, D). It stays in eval mode with no gradient;
    afterwards its weights and buffers are checked to be unchanged (BackboneChangedError).

    Under a process group (joined by the caller) every rank must call this: each takes its part
    of every global batch of `recipe.batch_size` (linear_shards.py), only the head is under DDP,
    and the test accuracy counts every test image once (hits summed over the ranks' shards). Every
    rank returns the same result. With `work_dir`, the probe's state is saved there after every
    epoch and every `save_every` steps inside one, and a rerun continues from it (linear_state.py);
    `identity` adds what else defines the probe to the resume check (e.g. the checkpoint and data
    it came from).
    """
    from ssl_bf.data.augment import EvalTransform
    from ssl_bf.knn.features import extract_features

    from .linear_shards import count_hits

    tic = time.perf_counter()
    dev = torch.device(device)
    torch.manual_seed(seed)
    model = model.to(dev).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    before = snapshot(model)
    train_labels = _dataset_labels(train_set)
    space = LabelSpace.from_train(train_labels, len(train_set.classes) or None)
    train_tf = ProbeTrainTransform(image_size, train_set.mean, train_set.std).to(dev)
    eval_tf = EvalTransform(image_size, test_set.mean, test_set.std).to(dev)
    use_amp = amp and dev.type == "cuda"
    head = LinearHead(_feature_dim(model, train_set, eval_tf, image_size, dev), space.num_classes,
                      bn=bn_head).to(dev)
    opt = torch.optim.SGD(head.parameters(), lr=recipe.peak_lr(), momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay)
    definition = json.loads(json.dumps({
        "protocol": protocol, "recipe": asdict(recipe), "bn_head": bn_head, "image_size": image_size,
        "seed": seed, "train_rows": len(train_set), "test_rows": len(test_set), "num_classes": space.num_classes,
        "backbone_sha256": weights_digest(before), **(identity or {})}))
    with (ProbeCheckpoint(work_dir, definition, dev) if work_dir else contextlib.nullcontext()) as saved:
        _train(model, head, opt, train_set, train_tf, space, train_labels, recipe, protocol, dev, num_workers,
               seed, use_amp, progress, saved, save_every)
    check_unchanged(before, model)

    feats, labels = extract_features(model, test_set, eval_tf, dev, batch_size=recipe.batch_size,
                                     num_workers=num_workers, progress=progress and dist_utils.is_main(),
                                     desc="linear test", gather=False)  # this rank's shard
    check_unchanged(before, model)
    head.eval()
    with torch.no_grad():
        logits = head(feats.to(dev)).cpu()
    target = torch.from_numpy(space.encode(labels.numpy()))  # (Q,) class indices, -1: unknown to train
    t1, t5 = topk_correct(logits, target)
    n = len(labels)
    hits, totals = class_hits(logits, target, space.num_classes)  # (C,), (C,)
    if dist_utils.is_initialized():
        c = space.num_classes
        summed = count_hits((t1, t5, n, *hits.tolist(), *totals.tolist()), dev)
        t1, t5, n = summed[:3]
        hits, totals = np.asarray(summed[3:3 + c], dtype=np.int64), np.asarray(summed[3 + c:], dtype=np.int64)
    if n == 0:  # --skip-unreadable left every test image out
        raise test_set.no_readable_image()
    hp = {**asdict(recipe), "used_lr": recipe.peak_lr(), "bn_head": bn_head, "image_size": image_size}
    hp["milestones"] = list(hp["milestones"])
    return ProbeResult(protocol, 100.0 * t1 / n, 100.0 * t5 / n, hp,
                       seconds=time.perf_counter() - tic, num_classes=space.num_classes,
                       head=head.cpu(), label_values=space_values(space), class_hits=hits, class_totals=totals,
                       train_counts=class_counts(space.encode(train_labels), space.num_classes))


def _train(model: nn.Module, head: LinearHead, opt: torch.optim.Optimizer, train_set, train_tf: ProbeTrainTransform,
           space: LabelSpace, train_labels: np.ndarray, recipe: Recipe, protocol: str, dev: torch.device,
           num_workers: int, seed: int, use_amp: bool, progress: bool, saved, save_every: int) -> None:
    """The SGD epochs, from the saved state's epoch and step on when `saved` holds one."""
    from tqdm.auto import tqdm

    from .linear_shards import ddp_head, epoch_order, normalise_over_global_batch, shard_batches, shard_loss

    def features(x: torch.Tensor) -> torch.Tensor:
        if not len(x):  # no rows of this batch on this rank
            return x.new_zeros((0, head.fc.in_features))
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            return model(x).float()  # (B, D)

    world = dist_utils.world_size()
    steps_per_epoch = math.ceil(len(train_set) / recipe.batch_size)
    total = recipe.epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(seed)
    first, skip = 0, 0
    state = saved.load() if saved is not None else None
    if state is not None:
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["order_rng"])
        torch.set_rng_state(state["torch_rng"])
        first = min(state["epoch"], recipe.epochs)
        skip = min(state.get("batches_done", 0), steps_per_epoch) if first < recipe.epochs else 0
        if dist_utils.is_main():
            where = f"after step {skip} of {steps_per_epoch} in epoch {first + 1}" if skip else f"after epoch {first}"
            print(f"linear {protocol}: resuming from {saved.path} {where} of {recipe.epochs}", flush=True)
    fc = ddp_head(head.fc, dev) if dist_utils.is_initialized() else head.fc
    known = space.encode(train_labels) >= 0  # (N,)
    step = first * steps_per_epoch + skip
    bar = tqdm(total=total, initial=step, desc=f"linear {protocol}", unit="step",
               disable=not progress or not dist_utils.is_main())
    for epoch in range(first, recipe.epochs):
        head.train()
        epoch_rng = gen.get_state()  # a mid-epoch save keeps it: the resume draws this order again
        order = epoch_order(train_set, gen)  # (N,)
        done = skip if epoch == first else 0  # steps of this epoch already trained
        for batch in shard_batches(train_set, order, recipe.batch_size, known, num_workers, seed + epoch, done,
                                   pin_memory=dev.type == "cuda"):  # real non_blocking copies
            for group in opt.param_groups:
                group["lr"] = recipe.lr_at(step / total)
            target = torch.from_numpy(space.encode(batch.labels.numpy())).to(dev)
            x = features(train_tf(batch.images.to(dev, non_blocking=True), batch.rows, batch.global_size))
            if world == 1 and not dist_utils.is_initialized():  # one process: the probe as it always was
                loss = F.cross_entropy(head(x), target, ignore_index=-1)
            else:
                x = normalise_over_global_batch(head.norm, x) if isinstance(head.norm, nn.BatchNorm1d) else x
                loss = shard_loss(fc(x), target, batch.labelled)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            done += 1
            bar.update(1)
            if done % LOSS_LOG_EVERY == 0 or done == steps_per_epoch:  # else: no host sync
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            if saved is not None and save_every and done % save_every == 0 and done < steps_per_epoch:
                saved.save(head, opt, epoch, epoch_rng, torch.get_rng_state(), batches_done=done)
        if saved is not None:
            saved.save(head, opt, epoch + 1, gen.get_state(), torch.get_rng_state())
    bar.close()


def _feature_dim(model: nn.Module, dataset, transform: nn.Module, image_size: int, dev: torch.device) -> int:
    """D of the model's features, from one image (no collective). For image folders one int64 is
    drawn from the global RNG: the DataLoader that found D before drew it (its worker base seed),
    and the crops drawn after it keep the stream they always had."""
    if hasattr(dataset, "get_batch"):
        image = dataset.get_batch(torch.arange(1))[0]
    else:
        torch.empty((), dtype=torch.int64).random_()
        image = dataset[0][0][None]
    with torch.no_grad():
        return int(model(transform(image.to(dev))).shape[1])


def _dataset_labels(dataset) -> np.ndarray:
    if hasattr(dataset, "labels"):
        return as_numpy(dataset.labels).astype(np.int64)
    if hasattr(dataset, "samples"):
        return np.asarray([label for _, label in dataset.samples], dtype=np.int64)
    return np.asarray([dataset[i][1] for i in range(len(dataset))], dtype=np.int64)
