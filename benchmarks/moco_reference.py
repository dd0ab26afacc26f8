"""The reference MoCo-v2 pipeline the benchmarks compare ssl-bf with, written as the official code has it.

- `ReferenceTwoCrops`: `main_moco.py --aug-plus` of facebookresearch/moco, per sample in the
  DataLoader workers: RandomResizedCrop(S, scale=(0.2, 1)), ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8,
  RandomGrayscale(0.2), MoCo's own blur (`moco.loader.GaussianBlur`: PIL's ImageFilter.GaussianBlur
  with a radius drawn from [0.1, 2.0]) p=0.5, flip, ToTensor, Normalize; two views an image.
- `ReferenceMoCo`: `moco/builder.py` with `mlp=True` in one process: a torchvision ResNet query
  encoder with the 2-layer MLP head, its momentum copy, a queue of K normalised keys, InfoNCE at T.
  The official builder shuffles BN across GPUs with `concat_all_gather`; one process has nothing to
  shuffle across, so here it does not shuffle (the ssl-bf side is set alike: `moco.shuffle_keys=false`,
  one BN group), and both sides compute the same thing.
- `reference_model_step`: one SGD step of it (lr 0.03, momentum 0.9, weight decay 1e-4), with the
  same precision and memory-format switches as `step_throughput.make_model_step`.
"""
from __future__ import annotations

import random
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from bench_common import training_step
from ssl_bf.data import IMAGENET_STATS


class PILGaussianBlur:
    """MoCo's `moco.loader.GaussianBlur`: PIL's blur with a radius drawn uniformly from `sigma`."""

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        self.sigma = sigma

    def __call__(self, image):
        from PIL import ImageFilter

        return image.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))


class ReferenceTwoCrops(torch.utils.data.Dataset):
    """MoCo-v2's per-sample augmentation (`main_moco.py --aug-plus`): two float (3, S, S) views per image."""

    def __init__(self, samples: list[tuple[str, int]], size: int) -> None:
        import torchvision.transforms as T

        self.samples = samples
        self.transform = T.Compose([
            T.RandomResizedCrop(size, scale=(0.2, 1.0)),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomApply([PILGaussianBlur((0.1, 2.0))], p=0.5),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(*IMAGENET_STATS),
        ])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        from PIL import Image

        path, label = self.samples[index]
        with Image.open(path) as img:
            img = img.convert("RGB")
        return self.transform(img), self.transform(img), label


class ReferenceMoCo(nn.Module):
    """moco/builder.py (MoCo-v2: `mlp=True`), one process, no key shuffle (see the module doc)."""

    def __init__(self, arch: str = "resnet50", dim: int = 128, queue_size: int = 65536, momentum: float = 0.999,
                 temperature: float = 0.2) -> None:
        import torchvision

        super().__init__()
        self.momentum, self.temperature = momentum, temperature
        self.encoder_q = getattr(torchvision.models, arch)(num_classes=dim)
        self.encoder_k = getattr(torchvision.models, arch)(num_classes=dim)
        hidden = self.encoder_q.fc.weight.shape[1]
        self.encoder_q.fc = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), self.encoder_q.fc)
        self.encoder_k.fc = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), self.encoder_k.fc)
        for q, k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            k.data.copy_(q.data)
            k.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue_size), dim=0))  # (D, K)
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def _momentum_update(self) -> None:
        for q, k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            k.data = k.data * self.momentum + q.data * (1.0 - self.momentum)

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        n, ptr = keys.shape[0], int(self.queue_ptr)  # the official code reads the pointer back too
        self.queue[:, ptr:ptr + n] = keys.T
        self.queue_ptr[0] = (ptr + n) % self.queue.shape[1]

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor) -> torch.Tensor:
        """The InfoNCE loss of a (N, 3, S, S) query batch against its keys and the queue."""
        q = F.normalize(self.encoder_q(im_q), dim=1)  # (N, D)
        with torch.no_grad():
            self._momentum_update()
            k = F.normalize(self.encoder_k(im_k), dim=1)  # (N, D)
        l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)  # (N, 1)
        l_neg = torch.einsum("nc,ck->nk", q, self.queue.clone().detach())  # (N, K)
        logits = torch.cat([l_pos, l_neg], dim=1) / self.temperature  # (N, 1 + K)
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        self._enqueue(k)
        return F.cross_entropy(logits, labels)


def reference_model_step(arch: str, device: torch.device, queue_size: int, amp: bool = True,
                         channels_last: bool = False, **moco) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """`step(x1, x2)`: one SGD step of `ReferenceMoCo` on two normalised (N, 3, S, S) view batches.
    `amp`: bf16 autocast on CUDA; `channels_last`: model and views in channels-last format."""
    def sgd(model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.03, momentum=0.9,
                               weight_decay=1e-4)

    return training_step(ReferenceMoCo(arch, queue_size=queue_size, **moco), sgd, lambda m, x1, x2: m(x1, x2),
                         device, amp, channels_last)
