"""Checkpoints of other projects: for each format a real network (seeded torchvision ResNet, a small
ViT in timm's layout written here as the reference forward) is wrapped in that format's exact key
layout and file structure, saved with torch.save, and read through the real CLI: `ssl-bf inspect`
must name the format and architecture, `ssl-bf embed` must give the source network's features on
the same images. Also: ViT head count by format, position-embedding resizing, ssl-bf -> timm ->
ssl-bf, the detectron2 export, unknown / corrupt / malicious files."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ssl_bf.cli import main

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
N = 8  # Fashion-MNIST test images embedded per check


# ----------------------------------------------------------------------------------------------
# Reference networks and inputs (independent of ssl-bf's code)
# ----------------------------------------------------------------------------------------------


def _fmnist() -> tuple[torch.Tensor, torch.Tensor]:
    from ssl_bf.data import DataError, build_dataset

    try:
        data = build_dataset("fashion-mnist", split="test", subset=N)
    except DataError as err:
        pytest.skip(f"Fashion-MNIST unavailable: {err}")
    return data.images.clone(), data.labels.clone()  # (N, 1, 28, 28) uint8, (N,)


def _reference_input(images: torch.Tensor, size: int) -> torch.Tensor:
    """What a 3-channel ImageNet-normalised network should see: gray -> RGB, resized up to `size`."""
    x = images.float() / 255  # (N, 1, 28, 28)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std  # (N, 3, S, S)


def _resnet(name: str = "resnet18", seed: int = 0, cifar_stem: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    net = getattr(torchvision.models, name)()
    if cifar_stem:  # solo-learn's CIFAR stem
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2, bias=False)
        net.maxpool = nn.Identity()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a wrong running stat would show
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    return net.eval()


def _resnet_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    fc, net.fc = net.fc, nn.Identity()
    try:
        with torch.no_grad():
            return net(x)  # (N, D)
    finally:
        net.fc = fc


class _Block(nn.Module):
    def __init__(self, dim: int, mlp: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv, self.attn.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(dim, mlp), nn.Linear(mlp, dim)

    def forward(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.attn.qkv(self.norm1(x)).reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, N, d/H)
        attn = (q @ k.transpose(-2, -1) * (d // heads) ** -0.5).softmax(dim=-1)  # (B, H, N, N)
        x = x + self.attn.proj((attn @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class TimmStyleViT(nn.Module):
    """A ViT with timm's / DINO's / MoCo-v3's tensor names: the reference forward (class token out)."""

    def __init__(self, dim=384, depth=2, mlp=1536, patch=8, grid=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + grid * grid, dim) * 0.02)
        self.blocks = nn.ModuleList(_Block(dim, mlp) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        with torch.no_grad():
            for p in self.parameters():
                p.add_(torch.randn_like(p) * 0.02)

    def forward(self, x: torch.Tensor, heads: int, pos_mode: str = "bicubic") -> torch.Tensor:
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)  # (B, G*G, D)
        grid, old = math.isqrt(x.shape[1]), math.isqrt(self.pos_embed.shape[1] - 1)
        pos = self.pos_embed
        if grid != old:  # DINO / timm: bicubic on the grid; MoCo-v3: the sin-cos formula anew
            if pos_mode == "sincos":
                pos = _moco_v3_sincos(grid, pos.shape[-1])
            else:
                patches = pos[:, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
                patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
                pos = torch.cat([pos[:, :1], patches.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], dim=1)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + pos
        for block in self.blocks:
            x = block(x, heads)
        return self.norm(x)[:, 0]  # (B, D)


def _moco_v3_sincos(grid: int, dim: int) -> torch.Tensor:
    """moco-v3 vits.py build_2d_sincos_position_embedding, transcribed (meshgrid over (w, h), 'ij')."""
    grid_w, grid_h = torch.meshgrid(torch.arange(grid, dtype=torch.float32),
                                    torch.arange(grid, dtype=torch.float32), indexing="ij")
    pos_dim = dim // 4
    omega = 1.0 / (10000.0 ** (torch.arange(pos_dim, dtype=torch.float32) / pos_dim))
    out_w = torch.einsum("m,d->md", grid_w.flatten(), omega)
    out_h = torch.einsum("m,d->md", grid_h.flatten(), omega)
    pos = torch.cat([torch.sin(out_w), torch.cos(out_w), torch.sin(out_h), torch.cos(out_h)], dim=1)[None]
    return torch.cat([torch.zeros(1, 1, dim), pos], dim=1)


def _vit(sincos: bool = False, **kw) -> TimmStyleViT:
    vit = TimmStyleViT(**kw).eval()
    if sincos:
        with torch.no_grad():
            vit.pos_embed.copy_(_moco_v3_sincos(math.isqrt(vit.pos_embed.shape[1] - 1), vit.pos_embed.shape[-1]))
    return vit


def _mlp(prefix: str, dims: list[int], last_bn: bool = True, start: int = 0) -> dict:
    """moco-v3 `_build_mlp` tensors: Linear(bias=False), BN, ReLU, ..., last BN without affine
    (`start`: index of the first Linear, 1 when BatchFormer's layer comes first)."""
    out, i = {}, start
    for layer, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        out[f"{prefix}.{i}.weight"] = torch.randn(b, a)
        last = layer == len(dims) - 2
        if not last or last_bn:
            bn = f"{prefix}.{i + 1}"
            if not last:
                out[f"{bn}.weight"], out[f"{bn}.bias"] = torch.ones(b), torch.zeros(b)
            out[f"{bn}.running_mean"], out[f"{bn}.running_var"] = torch.zeros(b), torch.ones(b)
            out[f"{bn}.num_batches_tracked"] = torch.tensor(5)
        i += 3
    return out


def _prefixed(prefix: str, sd: dict) -> dict:
    return {prefix + k: v.clone() for k, v in sd.items()}


def _backbone_sd(net: nn.Module) -> dict:
    return {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}


# ----------------------------------------------------------------------------------------------
# The formats, each as its project writes it
# ----------------------------------------------------------------------------------------------


def moco_v1(net):
    q = {**_backbone_sd(net), "fc.weight": torch.randn(128, 512), "fc.bias": torch.zeros(128)}
    sd = {**_prefixed("module.encoder_q.", q), **_prefixed("module.encoder_k.", q),
          "module.queue": torch.randn(128, 4096), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    return {"epoch": 200, "arch": "resnet18", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}


def moco_v2(net):
    d = net.fc.in_features
    q = {**_backbone_sd(net), "fc.0.weight": torch.randn(d, d), "fc.0.bias": torch.zeros(d),
         "fc.2.weight": torch.randn(128, d), "fc.2.bias": torch.zeros(128)}
    sd = {**_prefixed("module.encoder_q.", q), **_prefixed("module.encoder_k.", q),
          "module.queue": torch.randn(128, 4096), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    return {"epoch": 800, "arch": "resnet50", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}


def moco_v3_resnet(net, batchformer: bool = False):
    d = net.fc.in_features
    head = _mlp("fc", [d, 64, 32], start=1 if batchformer else 0)
    bf = {}
    if batchformer:  # the BatchFormer authors' builder: a TransformerDecorator first in the projector
        bf = {f"encoder_layers.{k}": v for k, v in nn.TransformerEncoderLayer(d, 4, d, 0.5).state_dict().items()}
        head.update(_prefixed("fc.0.", bf))
    enc = {**_backbone_sd(net), **head}
    sd = {**_prefixed("module.base_encoder.", enc), **_prefixed("module.momentum_encoder.", enc),
          **_prefixed("module.", _mlp("predictor", [32, 64, 32], last_bn=False))}
    if batchformer:
        sd.update(_prefixed("module.encoder_global.", bf))
    return {"epoch": 100, "arch": "resnet18", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []},
            "scaler": {"scale": 65536.0, "growth_factor": 2.0}}


def moco_v3_vit(vit):
    enc = {**vit.state_dict(), **_mlp("head", [384, 64, 64, 32])}
    sd = {**_prefixed("module.base_encoder.", enc), **_prefixed("module.momentum_encoder.", enc),
          **_prefixed("module.", _mlp("predictor", [32, 64, 32], last_bn=False))}
    return {"epoch": 300, "arch": "vit_small", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []},
            "scaler": {"scale": 1024.0}}


def _dino_head() -> dict:
    return {"mlp.0.weight": torch.randn(64, 384), "mlp.0.bias": torch.zeros(64), "mlp.2.weight": torch.randn(64, 64),
            "mlp.2.bias": torch.zeros(64), "last_layer.weight_g": torch.ones(65536, 1),
            "last_layer.weight_v": torch.randn(65536, 64)[:, :8].contiguous()}


def dino_full(backbone_sd, teacher_ddp: bool):
    teacher = {**_prefixed("backbone.", backbone_sd), **_prefixed("head.", _dino_head())}
    student = _prefixed("module.", teacher)  # the student is always DDP-wrapped
    if teacher_ddp:  # DINO wraps the teacher in DDP only when it has BatchNorm (ResNets)
        teacher = _prefixed("module.", teacher)
    # a different student, so using the wrong network would show
    student = {k: v + 0.5 if v.is_floating_point() else v for k, v in student.items()}
    args = argparse.Namespace(arch="vit_small", patch_size=8, out_dim=65536, lr=0.0005, output_dir="/out",
                              local_crops_scale=(0.05, 0.4), dist_url="env://")
    return {"student": student, "teacher": teacher, "optimizer": {"state": {}, "param_groups": []}, "epoch": 100,
            "args": args, "dino_loss": {"center": torch.zeros(1, 65536)}}


def _fake_lightning_attribute_dict(**items):
    """Lightning's AttributeDict as Lightning pickles it. Lightning is not installed here, so a
    stand-in class is registered under Lightning's module name only while the file is written
    (a mock of the writer, not of the reader under test)."""
    names = ["lightning", "lightning.fabric", "lightning.fabric.utilities", "lightning.fabric.utilities.data"]
    saved = {n: sys.modules.get(n) for n in names}
    for n in names:
        sys.modules[n] = types.ModuleType(n)
    cls = type("AttributeDict", (dict,), {"__module__": "lightning.fabric.utilities.data"})
    sys.modules["lightning.fabric.utilities.data"].AttributeDict = cls
    return cls(**items), saved


def solo_learn(backbone_sd, tmp_file):
    d = 512
    sd = {**_prefixed("backbone.", backbone_sd), **_prefixed("momentum_backbone.", backbone_sd),
          "projector.0.weight": torch.randn(64, d), "projector.0.bias": torch.zeros(64),
          "projector.3.weight": torch.randn(32, 64), "projector.3.bias": torch.zeros(32),
          "momentum_projector.0.weight": torch.randn(64, d), "momentum_projector.0.bias": torch.zeros(64),
          "classifier.weight": torch.randn(10, d), "classifier.bias": torch.zeros(10)}
    hparams, saved = _fake_lightning_attribute_dict(method="mocov3", backbone={"name": "resnet18"})
    try:
        torch.save({"epoch": 399, "global_step": 7800, "pytorch-lightning_version": "2.0.2", "state_dict": sd,
                    "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 399}}}},
                    "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_score": None, "dirpath": "/x"}},
                    "optimizer_states": [{"state": {}, "param_groups": []}], "lr_schedulers": [{"last_epoch": 399}],
                    "hparams_name": "kwargs", "hyper_parameters": hparams}, tmp_file)
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


# ----------------------------------------------------------------------------------------------
# CLI helpers
# ----------------------------------------------------------------------------------------------


def _inspect(path: str, *extra: str, tmp_path) -> dict:
    out = str(tmp_path / f"inspect-{os.path.basename(path)}.json")
    assert main(["inspect", path, "--json", out, *extra]) == 0
    with open(out) as f:
        return json.load(f)


def _embed(path: str, tmp_path, *extra: str, data: tuple = ("--data", "fashion-mnist")) -> np.ndarray:
    from ssl_bf.eval.formats import load_embeddings

    out = str(tmp_path / f"emb-{os.path.basename(path)}-{len(os.listdir(tmp_path))}.safetensors")
    code = main(["embed", "--checkpoint", path, *data, "--split", "test", "--subset", str(N), "--out", out,
                 "--no-progress", "--device", "cpu", "--batch-size", "4", *extra])
    assert code == 0
    return load_embeddings(out).embeddings


def _close(a: np.ndarray, b: torch.Tensor) -> None:
    np.testing.assert_allclose(a, b.numpy(), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# ResNet formats
# ----------------------------------------------------------------------------------------------

RESNET_CASES = {
    "moco-v1": ("resnet18", moco_v1, "moco-v1", {"head": "projection head (fc)", "momentum": "momentum encoder",
                                                 "queue": "queue"}),
    "moco-v2": ("resnet50", moco_v2, "moco-v2", {"head": "projection head (fc)", "queue": "queue"}),
    "moco-v3-resnet": ("resnet18", moco_v3_resnet, "moco-v3-resnet", {"head": "projector (fc)",
                                                                     "predictor": "predictor"}),
    "batchformer-mocov3": ("resnet18", lambda net: moco_v3_resnet(net, batchformer=True), "batchformer-mocov3",
                           {"bf": "BatchFormer layer", "head": "projector (fc)"}),
    "dino-resnet-full": ("resnet18", lambda net: dino_full(_backbone_sd(net), teacher_ddp=True), "dino",
                         {"head": "DINO head", "student": "student network (the teacher is used)"}),
    "dino-resnet50-backbone": ("resnet50", _backbone_sd, "torchvision", {}),
    "torchvision": ("resnet18", lambda net: net.state_dict(), "torchvision", {"fc": "classifier (fc)"}),
    "dataparallel": ("resnet18", lambda net: _prefixed("module.", net.state_dict()), "torchvision",
                     {"fc": "classifier (fc)"}),
}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if RESNET_CASES[c][0] == "resnet50" else c
                                  for c in RESNET_CASES])  # ResNet-50 files are ~100-250 MB: slow
def test_resnet_format_is_detected_and_embeds_like_its_source(tmp_path, case):
    arch, wrap, fmt, dropped = RESNET_CASES[case]
    images, _ = _fmnist()
    net = _resnet(arch, seed=len(case))
    path = str(tmp_path / f"{case}.pth")
    torch.save(wrap(net), path)
    report = _inspect(path, tmp_path=tmp_path)
    assert report["format"] == fmt
    assert report["architecture"]["name"] == arch and report["architecture"]["stem"] == "imagenet"
    assert report["parameters"] == sum(p.numel() for n, p in net.named_parameters() if not n.startswith("fc."))
    assert report["missing"] == [] and set(dropped.values()) <= set(report["dropped"])
    assert len(report["loaded"]) == len(_backbone_sd(net))
    size = 224 if arch == "resnet18" else 112  # any size gives the parity; ResNet-50 at 112 keeps it fast
    feats = _embed(path, tmp_path, *(["--image-size", str(size)] if size != 224 else []))
    _close(feats, _resnet_features(net, _reference_input(images, size)))


def test_solo_learn_cifar_checkpoint_with_lightning_hparams(tmp_path):
    images, _ = _fmnist()
    net = _resnet("resnet18", seed=3, cifar_stem=True)
    path = str(tmp_path / "solo.ckpt")
    solo_learn(_backbone_sd(net), path)
    report = _inspect(path, tmp_path=tmp_path)
    assert report["format"] == "solo-learn" and report["architecture"]["stem"] == "small"
    assert {"projector", "momentum encoder", "online classifier"} <= set(report["dropped"])
    assert report["input"]["image_size"] == 32 and "hyper_parameters" in report["other_entries"]
    _close(_embed(path, tmp_path), _resnet_features(net, _reference_input(images, 32)))


def test_dino_student_is_read_on_request_and_the_option_is_refused_elsewhere(tmp_path, capsys):
    """A DINO training checkpoint holds two networks: the teacher by default, the student with
    --dino-network student (embed gives that network's features); elsewhere the option is an error."""
    images, _ = _fmnist()
    teacher, student = _resnet("resnet18", seed=11), _resnet("resnet18", seed=12)
    path = str(tmp_path / "dino.pth")
    ckpt = dino_full(_backbone_sd(teacher), teacher_ddp=True)
    ckpt["student"] = {**_prefixed("module.backbone.", _backbone_sd(student)), **_prefixed("module.head.", _dino_head())}
    torch.save(ckpt, path)
    report = _inspect(path, "--dino-network", "student", tmp_path=tmp_path)
    assert report["format"] == "dino" and report["missing"] == []
    assert "teacher network (the student is used)" in report["dropped"]
    assert report["loaded"] and all(k.startswith("student.") for k in report["loaded"])
    x = _reference_input(images, 224)
    _close(_embed(path, tmp_path, "--dino-network", "student"), _resnet_features(student, x))
    _close(_embed(path, tmp_path), _resnet_features(teacher, x))  # the default stays the teacher
    plain = str(tmp_path / "tv.pth")
    torch.save(teacher.state_dict(), plain)
    capsys.readouterr()
    assert main(["inspect", plain, "--dino-network", "student"]) == 2
    assert "--dino-network is for DINO training checkpoints" in capsys.readouterr().err
    assert main(["inspect", path, "--dino-network", "both"]) == 2  # not a choice
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_and_linear_take_a_foreign_checkpoint(tmp_path, capsys):
    """`evaluate RUN --checkpoint FILE --data NAME` into a new folder, and `linear`, with a small-stem
    torchvision-layout ResNet (native 32 px)."""
    from ssl_bf.eval.formats import load_embeddings

    _fmnist()
    net = _resnet("resnet18", seed=5)
    net.conv1, net.maxpool = nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.Identity()
    net.eval()
    path = str(tmp_path / "small.pth")
    torch.save(net.state_dict(), path)
    run = str(tmp_path / "eval_run")
    assert main(["evaluate", run, "--checkpoint", path, "--data", "fashion-mnist", "--subset", "200",
                 "--linear", "none", "--device", "cpu", "--no-progress"]) == 0
    with open(os.path.join(run, "results.json")) as f:
        results = json.load(f)
    assert results["evaluated"]["dataset"] == "fashion-mnist" and len(results["knn"]) == 4
    test = load_embeddings(os.path.join(run, "embeddings", "test.safetensors"))
    from ssl_bf.data import build_dataset

    images = build_dataset("fashion-mnist", split="test", subset=200).images
    _close(test.embeddings, _resnet_features(net, _reference_input(images, 32)))
    capsys.readouterr()
    assert main(["linear", "--protocol", "cached", "--checkpoint", path, "--data", "fashion-mnist", "--subset", "64",
                 "--epochs", "1", "--lrs", "0.1", "--device", "cpu", "--no-progress"]) == 0
    assert "read " in capsys.readouterr().err  # the note naming the format
    os.makedirs(tmp_path / "other")
    assert main(["evaluate", str(tmp_path / "other"), "--checkpoint", path, "--subset", "200", "--linear", "none",
                 "--no-progress"]) == 2
    assert "--data is needed" in capsys.readouterr().err


def test_standard_224_pipeline_on_an_image_folder(tmp_path):
    """--data imagefolder: resize 256, centre crop 224, ImageNet mean/std, like torchvision's eval transform."""
    from PIL import Image
    from torchvision import transforms

    from ssl_bf.eval.formats import load_embeddings

    rng = np.random.default_rng(0)
    paths = []
    for split in ("train", "val"):
        for cls in ("a", "b"):
            os.makedirs(tmp_path / "imgs" / split / cls)
            for i, (w, h) in enumerate([(300, 300), (320, 240), (240, 320)]):
                path = str(tmp_path / "imgs" / split / cls / f"{i}.png")
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
                if split == "val":
                    paths.append(path)
    net = _resnet("resnet18", seed=7)
    ckpt = str(tmp_path / "tv.pth")
    torch.save(net.state_dict(), ckpt)
    out = str(tmp_path / "e.safetensors")
    assert main(["embed", "--checkpoint", ckpt, "--data", "imagefolder", "--root", str(tmp_path / "imgs"),
                 "--split", "test", "--out", out, "--no-progress", "--device", "cpu", "--workers", "0"]) == 0
    emb = load_embeddings(out)
    tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                             transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    order = emb.image_paths
    assert sorted(order) == sorted(paths)
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in order])
    _close(emb.embeddings, _resnet_features(net, x))


# ----------------------------------------------------------------------------------------------
# ViT formats and the head count
# ----------------------------------------------------------------------------------------------

VIT_CASES = {  # case -> (wrap, sincos pos-embed, expected format, heads the format implies)
    "moco-v3-vit": (moco_v3_vit, True, "moco-v3-vit", 12),
    "dino-vit-full": (lambda vit: dino_full(vit.state_dict(), teacher_ddp=False), False, "dino", 6),
    "dino-vit-backbone": (lambda vit: vit.state_dict(), False, "timm-vit", 6),
}


@pytest.mark.parametrize("case", list(VIT_CASES))
def test_vit_format_head_count_and_features(tmp_path, case):
    wrap, sincos, fmt, heads = VIT_CASES[case]
    images, _ = _fmnist()
    vit = _vit(sincos=sincos, seed=len(case))
    path = str(tmp_path / f"{case}.pth")
    torch.save(wrap(vit), path)
    report = _inspect(path, tmp_path=tmp_path)
    arch = report["architecture"]
    assert report["format"] == fmt
    assert (arch["depth"], arch["width"], arch["mlp_dim"], arch["patch_size"], arch["image_size"]) == (2, 384, 1536,
                                                                                                       8, 32)
    assert report["vit_heads"]["value"] == heads and fmt.split("-")[0] in report["vit_heads"]["reason"].lower()
    assert arch["pos_embed"].startswith("fixed" if sincos else "learned")
    x = _reference_input(images, 32)
    with torch.no_grad():
        ref, wrong = vit(x, heads), vit(x, 18 - heads)  # 12 <-> 6
    feats = _embed(path, tmp_path)
    _close(feats, ref)
    assert not np.allclose(feats, wrong.numpy(), atol=1e-3)  # the head count matters
    # --vit-heads overrides the format, and inspect says so
    assert _inspect(path, "--vit-heads", str(18 - heads), tmp_path=tmp_path)["vit_heads"]["reason"] == \
        "given by --vit-heads"
    _close(_embed(path, tmp_path, "--vit-heads", str(18 - heads)), wrong)


@pytest.mark.parametrize("case", ["moco-v3-vit", "dino-vit-full"])
def test_vit_position_embedding_follows_the_image_size(tmp_path, case):
    """48 px = a 6x6 grid: DINO's learned embedding is interpolated (bicubic, class token kept),
    MoCo-v3's sin-cos is computed anew."""
    wrap, sincos, _, heads = VIT_CASES[case]
    images, _ = _fmnist()
    vit = _vit(sincos=sincos, seed=11)
    path = str(tmp_path / f"{case}.pth")
    torch.save(wrap(vit), path)
    with torch.no_grad():
        ref = vit(_reference_input(images, 48), heads, pos_mode="sincos" if sincos else "bicubic")
    _close(_embed(path, tmp_path, "--image-size", "48"), ref)


def test_sincos_matches_moco_v3_formula():
    from ssl_bf.checkpoints.vit_layout import is_sincos, sincos_pos_embed

    for grid, dim in ((4, 384), (14, 384), (7, 192)):
        assert torch.equal(sincos_pos_embed(grid, dim), _moco_v3_sincos(grid, dim))
    assert is_sincos(_moco_v3_sincos(14, 384)) and not is_sincos(torch.randn(1, 197, 384))


# ----------------------------------------------------------------------------------------------
# Export: timm round trip, detectron2
# ----------------------------------------------------------------------------------------------


def _sslbf_checkpoint(tmp_path, *overrides: str, in_channels: int = 1, image_size: int = 28) -> str:
    from ssl_bf.config import save_config, to_dict
    from ssl_bf.run_config import load_config
    from ssl_bf.atomic_write import write_torch
    from ssl_bf.models.registry import build_model
    from ssl_bf.run_layout import Owner

    run = str(tmp_path / "run")
    cfg = load_config(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                                   "tiny.yaml"), [f"run.dir={run}", *overrides])
    torch.manual_seed(0)
    model = build_model(cfg, in_channels=in_channels, image_size=image_size)
    save_config(cfg, os.path.join(run, "config.yaml"))
    path = os.path.join(run, "checkpoints", "last.pt")
    write_torch({"model": model.state_dict(), "config": to_dict(cfg), "in_channels": in_channels,
                 "image_size": image_size, "epoch": 1, "step": 8}, path, owner=Owner.PRETRAIN)
    return path


def test_round_trip_sslbf_timm_sslbf_is_exact(tmp_path):
    from ssl_bf.checkpoints.checkpoint import backbone_state_dict
    from ssl_bf.checkpoints.vit_layout import timm_to_torchvision

    _fmnist()
    ckpt = _sslbf_checkpoint(tmp_path, "backbone.name=vit_mini", "backbone.patch_size=4")
    out = str(tmp_path / "timm.pt")
    assert main(["export", ckpt, out, "--format", "timm"]) == 0
    sd = torch.load(out, weights_only=True)
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.5.attn.qkv.weight", "blocks.0.mlp.fc2.bias",
            "norm.weight"} <= set(sd) and not any(k.startswith(("vit.", "head")) for k in sd)
    assert sd["pos_embed"].shape == (1, 1 + 7 * 7, 192) and sd["patch_embed.proj.weight"].shape == (192, 1, 4, 4)
    with open(str(tmp_path / "timm.json")) as f:
        side = json.load(f)
    assert side["format"] == "timm" and side["num_heads"] == 3 and side["timm_kwargs"]["patch_size"] == 4
    original = backbone_state_dict(torch.load(ckpt, weights_only=True)["model"])
    back, unknown = timm_to_torchvision(sd)
    assert unknown == [] and back.keys() == original.keys()
    assert all(torch.equal(back[k], original[k]) for k in original)
    report = _inspect(out, tmp_path=tmp_path)
    assert report["format"] == "timm-vit" and report["vit_heads"]["value"] == 3
    assert "ssl-bf export" in report["vit_heads"]["reason"] and report["input"]["channels"] == 1
    a = _embed(ckpt, tmp_path, data=())
    b = _embed(out, tmp_path, "--image-size", "28")
    assert np.array_equal(a, b)


def test_real_timm_loads_our_export_and_we_load_a_real_timm_vit(tmp_path):
    """timm itself (a test dependency), both ways: `export --format timm` loads strictly into
    timm.create_model(timm_model, **timm_kwargs) and timm's forward equals `ssl-bf embed` of the
    export; a ViT built by timm, saved as its plain state dict, embeds in ssl-bf like timm's forward."""
    import timm

    images, _ = _fmnist()
    ckpt = _sslbf_checkpoint(tmp_path, "backbone.name=vit_mini", "backbone.patch_size=4")
    out = str(tmp_path / "timm.pt")
    assert main(["export", ckpt, out, "--format", "timm"]) == 0
    with open(str(tmp_path / "timm.json")) as f:
        side = json.load(f)
    ours = timm.create_model(side["timm_model"] or "vit_small_patch16_224", pretrained=False, **side["timm_kwargs"])
    ours.load_state_dict(torch.load(out, weights_only=True), strict=True)
    mean, std = torch.tensor(side["mean"]).view(1, -1, 1, 1), torch.tensor(side["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        expected = ours.eval()((images.float() / 255 - mean) / std)  # (N, 192)
    _close(_embed(out, tmp_path, "--image-size", "28"), expected)

    torch.manual_seed(3)
    theirs = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=0).eval()
    with torch.no_grad():  # a trained-looking class token and position embedding, not timm's small init
        theirs.cls_token.normal_()
        theirs.pos_embed.normal_(std=0.5)
    path = str(tmp_path / "timm_vit.pth")
    torch.save(theirs.state_dict(), path)
    report = _inspect(path, tmp_path=tmp_path)
    assert report["format"] == "timm-vit" and report["vit_heads"]["value"] == 3 and report["missing"] == []
    with torch.no_grad():
        expected = theirs(_reference_input(images, 32))  # (N, 192)
    _close(_embed(path, tmp_path), expected)


def test_detectron2_export_key_set_and_shapes(tmp_path):
    from ssl_bf.checkpoints.checkpoint import backbone_state_dict
    from ssl_bf.io import NUMPY_ARRAY_GLOBALS, safe_unpickle

    ckpt = _sslbf_checkpoint(tmp_path, "backbone.name=resnet50", "backbone.stem=imagenet", "backbone.width=64",
                             "data.name=cifar10", "moco.split_bn_groups=1", in_channels=3, image_size=32)
    out = str(tmp_path / "d2.pkl")
    assert main(["export", ckpt, out, "--format", "detectron2"]) == 0
    obj = safe_unpickle(out, {**NUMPY_ARRAY_GLOBALS, ("builtins", "bytes"): bytes}, "numpy arrays", encoding="latin1")
    assert obj["matching_heuristics"] is True and obj["__author__"] == "ssl-bf"
    model = obj["model"]
    source = {k: v for k, v in backbone_state_dict(torch.load(ckpt, weights_only=True)["model"]).items()
              if not k.endswith("num_batches_tracked")}
    expected = {"stem.conv1.weight", "stem.conv1.norm.weight", "stem.conv1.norm.bias", "stem.conv1.norm.running_mean",
                "stem.conv1.norm.running_var"}
    for stage, blocks in zip((2, 3, 4, 5), (3, 4, 6, 3)):
        for b in range(blocks):
            for c in (1, 2, 3):
                expected |= {f"res{stage}.{b}.conv{c}.weight"} | {f"res{stage}.{b}.conv{c}.norm.{p}" for p in
                                                                  ("weight", "bias", "running_mean", "running_var")}
        expected |= {f"res{stage}.0.shortcut.weight"} | {f"res{stage}.0.shortcut.norm.{p}" for p in
                                                         ("weight", "bias", "running_mean", "running_var")}
    assert set(model) == expected and len(model) == len(source)
    assert model["stem.conv1.weight"].shape == (64, 3, 7, 7) and model["res5.2.conv3.weight"].shape == (2048, 512, 1, 1)
    assert model["res2.0.shortcut.weight"].shape == (256, 64, 1, 1)
    np.testing.assert_array_equal(model["res3.1.conv2.norm.running_var"], source["layer2.1.bn2.running_var"].numpy())
    with open(str(tmp_path / "d2.json")) as f:
        side = json.load(f)
    assert side["INPUT"]["FORMAT"] == "RGB" and side["MODEL"]["RESNETS"]["DEPTH"] == 50
    np.testing.assert_allclose(side["MODEL"]["PIXEL_MEAN"], [255 * m for m in (0.4914, 0.4822, 0.4465)], atol=1e-3)


def test_detectron2_export_refuses_a_small_stem(tmp_path, capsys):
    ckpt = _sslbf_checkpoint(tmp_path)
    assert main(["export", ckpt, str(tmp_path / "d2.pkl"), "--format", "detectron2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "small stem" in err and not os.path.exists(tmp_path / "d2.pkl")


# ----------------------------------------------------------------------------------------------
# Files that are none of them
# ----------------------------------------------------------------------------------------------


def test_unknown_layout_lists_formats_and_keys(tmp_path, capsys):
    path = str(tmp_path / "u.pt")
    torch.save({"weights": {"a.b": torch.zeros(2)}, "meta": 1}, path)
    assert main(["inspect", path]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "['meta', 'weights']" in err
    assert all(f in err for f in ("moco-v2", "moco-v3-vit", "dino", "solo-learn", "torchvision", "timm-vit"))
    torch.save({"conv.weight": torch.zeros(2)}, path)
    assert main(["inspect", path]) == 2
    assert "u.json" in capsys.readouterr().err  # the ssl-bf export hint


def test_corrupt_file_exits_2(tmp_path, capsys):
    path = str(tmp_path / "c.pth")
    torch.save(_resnet().state_dict(), path)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    assert main(["inspect", path]) == 2
    assert "not a torch checkpoint" in capsys.readouterr().err


class _Boom:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['SSL_BF_TEST_PWNED']}",))


def test_disallowed_global_is_refused_and_not_executed(tmp_path, capsys, monkeypatch):
    flag = tmp_path / "pwned"
    monkeypatch.setenv("SSL_BF_TEST_PWNED", str(flag))
    path = str(tmp_path / "evil.pth")
    torch.save({"student": {"w": torch.zeros(1)}, "teacher": {"w": torch.zeros(1)}, "args": _Boom()}, path)
    for argv in (["inspect", path], ["embed", "--checkpoint", path, "--data", "fashion-mnist", "--split", "test",
                                     "--out", str(tmp_path / "e.safetensors")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "system" in err and "refuses to load" in err and "argparse.Namespace" in err
    assert not flag.exists()
