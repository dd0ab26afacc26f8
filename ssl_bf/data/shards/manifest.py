"""`manifest.json`: what a shard folder holds, checked field by field when it is read.

    {"format": "ssl-bf-shards", "version": 1, "source": "/data/imagenet", "layout": "imagefolder",
     "classes": ["n01440764", ...], "order": "shuffled", "seed": 0, "shard_size_mb": 256.0,
     "splits": {"train": {"folder": "train", "samples": 1281167,
                          "index": {"name": "train-samples.tsv", "bytes": ..., "sha256": ...},
                          "shards": [{"name": "train-000000.tar", "samples": 2398, "bytes": ...,
                                      "sha256": ..., "plan": ...}, ...]},
                "test": {...}},
     "skipped": [{"split": "train", "path": "n01440764/bad.JPEG", "shard": "train-000003.tar",
                  "reason": "..."}],
     "total": {"samples": ..., "bytes": ..., "shards": ...}}

Every shard and index file sits beside the manifest (plain file names, never a path). A split
whose source folder is the train split's (a flat class folder, an unlabeled tree) lists the train
split's very entries: the folder readers use such a folder for both splits too. `plan` is the
writer's fingerprint of the files a shard was cut from (a rerun reuses a shard only when it
matches). Nothing in the file is executed; a field of the wrong type or value is refused with
one line naming the manifest and the field.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from .layout import FORMAT, MANIFEST_NAME, SPLITS, VERSION, ShardError

LAYOUTS = ("imagefolder", "folder")
ORDERS = ("shuffled", "sorted")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class FileEntry:
    """A file beside the manifest: its name, size in bytes and sha256 (hex)."""

    name: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class ShardEntry(FileEntry):
    """One shard: a FileEntry with its sample count and the writer's plan fingerprint."""

    samples: int = 0
    plan: str = ""


@dataclass(frozen=True)
class SplitEntry:
    """One split: its source folder (relative to the source), shards in order, sample list."""

    folder: str
    shards: tuple[ShardEntry, ...]
    index: FileEntry

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)


@dataclass
class Manifest:
    """A checked manifest; `path` is where it was read from (or is to be written)."""

    path: str
    source: str
    layout: str
    classes: tuple[str, ...]
    order: str
    seed: int
    shard_size_mb: float
    splits: dict[str, SplitEntry]
    skipped: tuple[dict, ...] = field(default_factory=tuple)

    @property
    def folder(self) -> str:
        return os.path.dirname(self.path)

    @property
    def labelled(self) -> bool:
        return self.layout == "imagefolder"

    def file_path(self, entry: FileEntry) -> str:
        return os.path.join(self.folder, entry.name)

    def split(self, name: str) -> SplitEntry:
        """The split `name`; a ShardError naming the manifest when it has none."""
        if name not in self.splits:
            raise ShardError(f"manifest {self.path} has no {name} split (it holds "
                             f"{', '.join(self.splits)}); shard a folder with train/ and val/ (or test/) "
                             f"class folders to get both")
        return self.splits[name]

    def to_json(self) -> dict:
        splits = {name: {"folder": s.folder, "samples": s.samples, "index": _file_json(s.index),
                         "shards": [{**_file_json(e), "samples": e.samples, "plan": e.plan} for e in s.shards]}
                  for name, s in self.splits.items()}
        unique = {e.name: e for s in self.splits.values() for e in s.shards}
        return {"format": FORMAT, "version": VERSION, "source": self.source, "layout": self.layout,
                "classes": list(self.classes), "order": self.order, "seed": self.seed,
                "shard_size_mb": self.shard_size_mb, "splits": splits, "skipped": list(self.skipped),
                "total": {"samples": sum(e.samples for e in unique.values()),
                          "bytes": sum(e.bytes for e in unique.values()), "shards": len(unique)}}


def _file_json(entry: FileEntry) -> dict:
    return {"name": entry.name, "bytes": entry.bytes, "sha256": entry.sha256}


def manifest_path(root: str) -> str:
    """`root` as given for `data.root` / `--data`: the manifest file, or the folder holding one."""
    path = os.path.abspath(os.path.expanduser(root))
    return os.path.join(path, MANIFEST_NAME) if os.path.isdir(path) else path


def read_manifest(root: str) -> Manifest:
    """Read and check the manifest at `root` (a file, or a folder holding manifest.json)."""
    path = manifest_path(root)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ShardError(f"shard manifest {path} not found; write it with `ssl-bf shard SRC OUT` and give "
                         f"OUT/{MANIFEST_NAME}") from None
    except OSError as e:
        raise ShardError(f"shard manifest {path} cannot be read: {e.strerror or e}") from None
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_no_constant, object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ShardError(f"shard manifest {path} is not valid JSON ({_short(e)}); rewrite it with "
                         f"`ssl-bf shard SRC OUT`") from None
    return parse_manifest(obj, path)


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:200]


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number in strict JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} appears twice")
        out[key] = value
    return out


class _Checker:
    """Field checks that raise a ShardError naming the manifest and the field."""

    def __init__(self, path: str) -> None:
        self.path = path

    def bad(self, where: str, what: str) -> ShardError:
        return ShardError(f"shard manifest {self.path}: {where} {what}; rewrite it with `ssl-bf shard SRC OUT`")

    def get(self, obj: Any, key: str, kind: type | tuple, where: str) -> Any:
        if not isinstance(obj, dict):
            raise self.bad(where, "is not a JSON object")
        if key not in obj:
            raise self.bad(f"{where}.{key}" if where else key, "is missing")
        value = obj[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise self.bad(f"{where}.{key}" if where else key, f"must be {names}, got {type(value).__name__}")
        return value

    def count(self, obj: Any, key: str, where: str, low: int) -> int:
        value = self.get(obj, key, int, where)
        if value < low:
            raise self.bad(f"{where}.{key}", f"must be at least {low}, got {value}")
        return value

    def name(self, obj: Any, where: str, suffix: str) -> str:
        value = self.get(obj, "name", str, where)
        if (not value or "\x00" in value or "/" in value or "\\" in value or value in (".", "..")
                or value.startswith(".") or not value.endswith(suffix) or value == MANIFEST_NAME
                or len(os.fsencode(value)) > 255):
            raise self.bad(f"{where}.name", f"{value!r} is not a plain file name ending in {suffix} beside the "
                                            f"manifest")
        return value

    def file(self, obj: Any, where: str, suffix: str) -> FileEntry:
        name = self.name(obj, where, suffix)
        size = self.count(obj, "bytes", where, 1)
        digest = self.get(obj, "sha256", str, where)
        if not _SHA256.match(digest):
            raise self.bad(f"{where}.sha256", "is not 64 lower-case hex digits")
        return FileEntry(name, size, digest)

    def shard(self, obj: Any, where: str) -> ShardEntry:
        base = self.file(obj, where, ".tar")
        samples = self.count(obj, "samples", where, 1)
        plan = self.get(obj, "plan", str, where) if isinstance(obj, dict) and "plan" in obj else ""
        return ShardEntry(base.name, base.bytes, base.sha256, samples, plan)


def parse_manifest(obj: Any, path: str) -> Manifest:
    """Check a decoded manifest; a ShardError names the first field that does not fit."""
    c = _Checker(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ShardError(f"{path} is not an ssl-bf shard manifest (no \"format\": \"{FORMAT}\"); give the "
                         f"{MANIFEST_NAME} that `ssl-bf shard` wrote")
    version = c.get(obj, "version", int, "")
    if version != VERSION:
        raise ShardError(f"shard manifest {path} has format version {version}; this ssl-bf reads version "
                         f"{VERSION}: rewrite it with `ssl-bf shard SRC OUT` or update ssl-bf")
    layout = c.get(obj, "layout", str, "")
    if layout not in LAYOUTS:
        raise c.bad("layout", f"must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    classes = c.get(obj, "classes", list, "")
    if not all(isinstance(x, str) for x in classes) or len(set(classes)) != len(classes):
        raise c.bad("classes", "must be a list of distinct strings")
    if (layout == "imagefolder") != bool(classes):
        raise c.bad("classes", "must be non-empty exactly when the layout is imagefolder")
    order = c.get(obj, "order", str, "")
    if order not in ORDERS:
        raise c.bad("order", f"must be one of {', '.join(ORDERS)}, got {order!r}")
    seed = c.count(obj, "seed", "", 0)
    size_mb = c.get(obj, "shard_size_mb", (int, float), "")
    if not math.isfinite(size_mb) or size_mb <= 0:
        raise c.bad("shard_size_mb", f"must be a positive number, got {size_mb}")
    source = c.get(obj, "source", str, "")
    splits_obj = c.get(obj, "splits", dict, "")
    unknown = sorted(set(splits_obj) - set(SPLITS))
    if unknown or "train" not in splits_obj:
        got = ", ".join(map(repr, splits_obj)) or "none"
        raise c.bad("splits", f"must hold train (and optionally test), got {got}")
    splits = {name: _split(c, splits_obj[name], f"splits.{name}") for name in SPLITS if name in splits_obj}
    _check_files_agree(c, splits)
    skipped = c.get(obj, "skipped", list, "") if "skipped" in obj else []
    for i, item in enumerate(skipped):
        for key in ("split", "path", "shard", "reason"):
            c.get(item, key, str, f"skipped[{i}]")
    manifest = Manifest(path, source, layout, tuple(classes), order, seed, float(size_mb), splits, tuple(skipped))
    if "total" in obj:
        total, want = obj["total"], manifest.to_json()["total"]
        if total != want:
            raise c.bad("total", f"is {json.dumps(total)} but the shards add up to {json.dumps(want)}")
    return manifest


def _split(c: _Checker, obj: Any, where: str) -> SplitEntry:
    folder = c.get(obj, "folder", str, where)
    shard_list = c.get(obj, "shards", list, where)
    if not shard_list:
        raise c.bad(f"{where}.shards", "is empty")
    shards = tuple(c.shard(item, f"{where}.shards[{i}]") for i, item in enumerate(shard_list))
    names = [s.name for s in shards]
    if len(set(names)) != len(names):
        raise c.bad(f"{where}.shards", "lists a shard twice")
    index = c.file(c.get(obj, "index", dict, where), f"{where}.index", ".tsv")
    samples = c.count(obj, "samples", where, 1)
    if samples != sum(s.samples for s in shards):
        raise c.bad(f"{where}.samples", f"is {samples} but its shards hold {sum(s.samples for s in shards)}")
    return SplitEntry(folder, shards, index)


def _check_files_agree(c: _Checker, splits: dict[str, SplitEntry]) -> None:
    """A file named in several places is the same file everywhere, and no shard is an index."""
    seen: dict[str, FileEntry] = {}
    for split in splits.values():
        for entry in (*split.shards, split.index):
            other: Optional[FileEntry] = seen.setdefault(entry.name, entry)
            if other != entry:
                raise c.bad("splits", f"describe {entry.name} in two different ways")
    shards = {s.name for split in splits.values() for s in split.shards}
    indexes = {split.index.name for split in splits.values()}
    if shards & indexes:
        raise c.bad("splits", f"use {sorted(shards & indexes)[0]} as both a shard and a sample list")
