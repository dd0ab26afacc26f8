"""Small shard folders for tests: Fashion-MNIST JPEGs (tests/image_folder.py) written by `ssl-bf shard`,
and the tools to break them on purpose (a shard rewritten with chosen members, a manifest whose
size and sha256 entries follow a changed shard)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil

from image_folder import make_jpeg_folder
from tiny_run import TINY

# pretraining on a small shard folder of 32 px crops, one process, no monitor (override with more)
PRETRAIN = ["--config", TINY, "data.name=shards", "data.subset=null", "data.load_size=32", "augment.image_size=32",
            "augment.recipe=light", "train.batch_size=16", "moco.queue_size=64", "monitor.knn_every=0",
            "train.log_every=1"]


def make_folder(root: str, train_per_class: int = 16, val_per_class: int = 8) -> str:
    """root/train/<class>/*.jpg and root/val/<class>/*.jpg (4 Fashion-MNIST classes), once."""
    if not os.path.isdir(os.path.join(root, "train")):
        make_jpeg_folder(root, train_per_class=train_per_class, val_per_class=val_per_class)
    return root


def make_shards(folder: str, out: str, *extra: str, shard_size_mb: float = 0.02) -> str:
    """`ssl-bf shard folder out --shard-size MB ...`; returns out/manifest.json."""
    from ssl_bf.cli import main

    assert main(["shard", folder, out, "--shard-size", str(shard_size_mb), "--no-progress", *extra]) == 0
    return os.path.join(out, "manifest.json")


def copy_shards(src: str, dest: str) -> str:
    """A copy of a shard folder (the manifest's `source` still names the image folder)."""
    shutil.copytree(src, dest)
    return os.path.join(dest, "manifest.json")


def load(manifest: str) -> dict:
    with open(manifest) as f:
        return json.load(f)


def save(manifest: str, obj: dict) -> None:
    with open(manifest, "w") as f:
        json.dump(obj, f, indent=2)


def shard_entries(obj: dict, split: str = "train") -> list[dict]:
    return obj["splits"][split]["shards"]


def restamp(manifest: str, name: str) -> None:
    """Make every manifest entry of file `name` state its present size and sha256 (so the checks
    after the sha256 one see a changed shard)."""
    folder = os.path.dirname(manifest)
    data = open(os.path.join(folder, name), "rb").read()
    obj = load(manifest)
    for split in obj["splits"].values():
        for entry in [*split["shards"], split["index"]]:
            if entry["name"] == name:
                entry["bytes"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    obj.pop("total", None)
    save(manifest, obj)


def rewrite_shard(path: str, edit) -> list[dict]:
    """Rewrite a shard with `edit(samples) -> samples` (samples as webdataset dicts of raw bytes)."""
    from webdataset import TarWriter

    samples = read_samples(path)
    samples = edit(samples)
    with TarWriter(path, encoder=False, format="PAX_FORMAT") as tar:
        for s in samples:
            tar.write(s)
    return samples


def read_samples(path: str) -> list[dict]:
    """The samples of a shard as dicts {"__key__": key, ext: bytes}, in order (Python's tarfile)."""
    import tarfile

    samples: list[dict] = []
    with tarfile.open(path) as tar:
        for member in tar:
            key, ext = member.name.split(".", 1)
            if not samples or samples[-1]["__key__"] != key:
                samples.append({"__key__": key})
            samples[-1][ext] = tar.extractfile(member).read()
    return samples


# --- damage on purpose ---------------------------------------------------------------------------
def flip_byte(path: str, at: int = 600) -> None:
    """Invert one byte of a file (inside a JPEG of the first samples for a shard)."""
    data = bytearray(open(path, "rb").read())
    data[at] ^= 0xFF
    open(path, "wb").write(bytes(data))


def drop_cls(samples: list[dict], i: int = 1) -> list[dict]:
    """`rewrite_shard` edit: sample i loses its .cls member."""
    samples[i].pop("cls")
    return samples


def cut_image(samples: list[dict], i: int = 2, keep: int = 50) -> list[dict]:
    """`rewrite_shard` edit: sample i's JPEG keeps only its first `keep` bytes (it no longer decodes)."""
    samples[i]["jpg"] = samples[i]["jpg"][:keep]
    return samples


def restamped(edit):
    """A break(manifest, shard): rewrite the shard with `edit` and restamp its manifest entries, so the
    checks after the sha256 one meet the change."""
    def brk(manifest: str, shard: str) -> None:
        rewrite_shard(shard, edit)
        restamp(manifest, os.path.basename(shard))
    return brk
