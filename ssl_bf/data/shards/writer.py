"""`ssl-bf shard`'s work: write the planned shards, a sample list per split and the manifest.

Each shard is written to a temp file beside its final name, hashed as it is written, and renamed
into place; a ledger (OUT/.ssl-bf-shard-ledger.json, rewritten atomically after every shard)
records its name, plan fingerprint, sample count, size and sha256. A rerun reuses a shard when its
fingerprint is unchanged and the file still has the recorded size and sha256, and writes the rest.
The sample lists and manifest.json are written last, atomically; the ledger is then removed (the
manifest holds the same records, so a later rerun reuses everything).

OUT must be new, empty of the names it would write, or a folder this command wrote from the same
SRC with the same options; anything else is refused before anything is written.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

from ...atomic_write import write_json, write_text, write_with
from ..base import DataError
from .layout import LEDGER_NAME, MANIFEST_NAME, ShardError, index_name
from .manifest import FileEntry, Manifest, ShardEntry, SplitEntry, read_manifest
from .plan import PlannedShard, SplitSource, in_shard_order, list_source, plan_split
from .tar_access import sha256_of

LEDGER_FORMAT = "ssl-bf-shard-ledger"


@dataclass(frozen=True)
class Settings:
    """What defines a shard folder besides its files: a rerun must give the same."""

    source: str
    layout: str
    order: str
    seed: int
    shard_size_mb: float

    def differences(self, other: "Settings") -> list[str]:
        return [f"{k}: {getattr(other, k)!r} there, {getattr(self, k)!r} now" for k in self.__dataclass_fields__
                if getattr(self, k) != getattr(other, k)]


@dataclass
class Done:
    """A finished shard as the ledger records it (samples 0: every image of it was unreadable)."""

    entry: ShardEntry
    skipped: list[dict] = field(default_factory=list)  # {"path", "reason"}


@dataclass
class ShardReport:
    manifest: Manifest
    written: int
    reused: int
    removed: list[str]


def decode_problem(data: bytes) -> Optional[str]:
    """None when the bytes decode as an image the readers can use, else what went wrong.
    (A full decode at JPEG's cheapest DCT scale: every coefficient is read, so a cut file fails.)"""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            img.convert("RGB")
    except Exception as e:  # a decode boundary: any failure means an unreadable image
        return " ".join(f"{type(e).__name__}: {e}".split())[:200]
    return None


class _HashingFile:
    """A binary file wrapper that hashes and counts what is written through it."""

    def __init__(self, f) -> None:
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)


class _NoSamples(Exception):
    """Every image of a shard was unreadable (and skipped): no file is written."""


def write_shard(out: str, planned: PlannedShard, labelled: bool, skip_unreadable: bool,
                tick: Callable[[], None]) -> Done:
    """Write one planned shard (temp file, then rename); unreadable images refused or skipped."""
    from webdataset import TarWriter

    skipped: list[dict] = []
    count, digest = 0, None
    path = os.path.join(out, planned.name)

    def write_tar(f) -> None:
        nonlocal count, digest
        sink = _HashingFile(f)
        with TarWriter(sink, encoder=False, mtime=0, format="PAX_FORMAT", user="ssl-bf", group="ssl-bf") as tar:
            for image in planned.images:
                problem, data = _read(image.path)
                tick()
                if problem is not None:
                    if not skip_unreadable:
                        raise DataError(f"{image.path} is not a readable image ({problem}); fix or remove it, "
                                        f"or pass --skip-unreadable to leave such images out (the manifest "
                                        f"lists them)")
                    skipped.append({"path": image.rel, "reason": problem})
                    continue
                sample = {"__key__": image.key, image.member.rsplit(".", 1)[1]: data}
                if labelled:
                    sample["cls"] = str(image.label).encode()
                tar.write(sample)
                count += 1
        if count == 0:
            raise _NoSamples  # no file is left behind
        digest = sink.sha.hexdigest(), sink.size

    try:
        write_with(path, None, write_tar, option="shard")  # OUT's files are ours (_check_out)
    except _NoSamples:
        pass
    sha, size = digest if digest else ("0" * 64, 0)
    return Done(ShardEntry(planned.name, size, sha, count, planned.fingerprint), skipped)


def _read(path: str) -> tuple[Optional[str], bytes]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return f"cannot be read: {e.strerror or e}", b""
    return decode_problem(data), data


# --- what OUT already holds ----------------------------------------------------------------------


def _prior(out: str, settings: Settings) -> tuple[dict[str, Done], bool]:
    """(finished shards by name, whether OUT holds a ledger or manifest of this command)."""
    ledger, manifest = os.path.join(out, LEDGER_NAME), os.path.join(out, MANIFEST_NAME)
    if os.path.exists(ledger):
        record = ledger
        saved, done = _read_ledger(ledger)
    elif os.path.exists(manifest):
        record = manifest
        try:
            m = read_manifest(manifest)
        except ShardError as e:
            raise ShardError(f"{e}. Its shards cannot be checked without it: give another OUT, or remove {out} to "
                             f"write them all again") from None
        saved = Settings(m.source, m.layout, m.order, m.seed, m.shard_size_mb)
        skipped: dict[str, list[dict]] = {}
        for item in m.skipped:
            skipped.setdefault(item["shard"], []).append({"path": item["path"], "reason": item["reason"]})
        done = {e.name: Done(e, skipped.get(e.name, [])) for s in m.splits.values() for e in s.shards}
    else:
        return {}, False
    diff = settings.differences(saved)
    if diff:
        raise ShardError(f"{record} records shards written with other settings ({'; '.join(diff)}); give another "
                         f"OUT, or the same SRC and options to finish or update it")
    return done, True


def _read_ledger(path: str) -> tuple[Settings, dict[str, Done]]:
    bad = ShardError(f"{path} is not a readable ledger of `ssl-bf shard`; remove it and its folder's shards "
                     f"(or give another OUT) to write them again")
    try:
        with open(path, "rb") as f:
            obj = json.loads(f.read().decode("utf-8"))
        if obj.get("format") != LEDGER_FORMAT:
            raise bad
        s = obj["settings"]
        settings = Settings(str(s["source"]), str(s["layout"]), str(s["order"]), int(s["seed"]),
                            float(s["shard_size_mb"]))
        done = {}
        for name, d in obj["shards"].items():
            entry = ShardEntry(str(name), int(d["bytes"]), str(d["sha256"]), int(d["samples"]), str(d["plan"]))
            done[name] = Done(entry, [{"path": str(x["path"]), "reason": str(x["reason"])} for x in d["skipped"]])
        return settings, done
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        raise bad from None


def _write_ledger(out: str, settings: Settings, done: dict[str, Done]) -> None:
    shards = {name: {"samples": d.entry.samples, "bytes": d.entry.bytes, "sha256": d.entry.sha256,
                     "plan": d.entry.plan, "skipped": d.skipped} for name, d in done.items()}
    write_json({"format": LEDGER_FORMAT, "settings": settings.__dict__, "shards": shards},
               os.path.join(out, LEDGER_NAME), option="the shard ledger", kind=None)


def _still_good(out: str, planned: PlannedShard, done: Optional[Done]) -> bool:
    """A recorded shard of the same inputs whose file still has the recorded size and sha256."""
    if done is None or done.entry.plan != planned.fingerprint:
        return False
    if done.entry.samples == 0:
        return True  # nothing was written for it
    path = os.path.join(out, planned.name)
    try:
        if os.path.getsize(path) != done.entry.bytes:
            return False
        with open(path, "rb") as f:
            return sha256_of(f) == done.entry.sha256
    except OSError:
        return False


def _check_out(out: str, names: list[str], ours: bool) -> None:
    """Refuse an OUT that holds a file we would write without being a folder of this command."""
    if ours or not os.path.isdir(out):
        return
    taken = [n for n in names if os.path.lexists(os.path.join(out, n))]
    if taken:
        raise ShardError(f"OUT {out} already holds {taken[0]}, which no ledger or manifest of `ssl-bf shard` there "
                         f"accounts for; give a new or empty folder")


# --- the command ---------------------------------------------------------------------------------


def write_shards(src: str, out: str, shard_size_mb: float, unlabeled: bool = False, order: str = "shuffled",
                 seed: int = 0, skip_unreadable: bool = False, progress: bool = True) -> ShardReport:
    """Shard the image folder `src` into `out` (see the module docstring); returns what was done."""
    from tqdm.auto import tqdm

    src, out = os.path.abspath(os.path.expanduser(src)), os.path.abspath(os.path.expanduser(out))
    if not os.path.isdir(src):
        raise ShardError(f"SRC {src} is not a folder; give the image folder to shard")
    settings = Settings(src, "folder" if unlabeled else "imagefolder", order, seed, float(shard_size_mb))
    labelled = not unlabeled
    classes, sources = list_source(src, unlabeled)
    own = {name: s for name, s in sources.items() if isinstance(s, SplitSource)}
    target = max(1, int(shard_size_mb * 1e6))
    plans = {name: plan_split(name, in_shard_order(s.images, order, seed), labelled, target)
             for name, s in own.items()}
    planned = [p for ps in plans.values() for p in ps]
    names = [p.name for p in planned] + [index_name(n) for n in own] + [MANIFEST_NAME]
    if os.path.exists(out) and not os.path.isdir(out):
        raise ShardError(f"OUT {out} is a file; give a folder (new, or one `ssl-bf shard` wrote)")
    prior, ours = _prior(out, settings) if os.path.isdir(out) else ({}, False)
    _check_out(out, names, ours)
    os.makedirs(out, exist_ok=True)

    done: dict[str, Done] = {}
    written = reused = 0
    with tqdm(total=sum(len(p.images) for p in planned), desc="shard", unit="img", disable=not progress) as bar:
        for p in planned:
            if _still_good(out, p, prior.get(p.name)):
                done[p.name] = prior[p.name]
                bar.update(len(p.images))
                reused += 1
            else:
                done[p.name] = write_shard(out, p, labelled, skip_unreadable, lambda: bar.update(1))
                written += 1
            if done[p.name].skipped and not skip_unreadable:
                first = done[p.name].skipped[0]
                raise DataError(f"{os.path.join(src, own[p.split].folder, first['path'])} is not a readable image "
                                f"({first['reason']}; left out by an earlier run with --skip-unreadable); fix or "
                                f"remove it, or pass --skip-unreadable again")
            _write_ledger(out, settings, done)
    manifest = _finish(out, settings, classes, sources, plans, done)
    removed = _remove_stale(out, prior, done) if ours else []
    return ShardReport(manifest, written, reused, removed)


def _finish(out: str, settings: Settings, classes: list[str], sources: dict, plans: dict[str, list[PlannedShard]],
            done: dict[str, Done]) -> Manifest:
    """Write each split's sample list, then the manifest; remove the ledger."""
    splits: dict[str, SplitEntry] = {}
    skipped: list[dict] = []
    for split, shards in plans.items():
        lines, entries = [], []
        for p in shards:
            d = done[p.name]
            left_out = {x["path"] for x in d.skipped}
            skipped += [{"split": split, "path": x["path"], "shard": p.name, "reason": x["reason"]} for x in d.skipped]
            if d.entry.samples:
                entries.append(d.entry)
                lines += [f"{im.key}\t{im.label if settings.layout == 'imagefolder' else -1}\n"
                          for im in p.images if im.rel not in left_out]
        if not entries:
            raise DataError(f"no readable image in the {split} split of {settings.source}; nothing to shard")
        data = "".join(lines).encode("ascii")
        name = index_name(split)
        write_text(data.decode("ascii"), os.path.join(out, name), option="the sample list", kind=None)
        index = FileEntry(name, len(data), hashlib.sha256(data).hexdigest())
        splits[split] = SplitEntry(sources[split].folder, tuple(entries), index)
    for split, alias in sources.items():
        if isinstance(alias, str):
            splits[split] = splits[alias]
    manifest = Manifest(os.path.join(out, MANIFEST_NAME), settings.source, settings.layout, tuple(classes),
                        settings.order, settings.seed, settings.shard_size_mb, splits, tuple(skipped))
    write_json(manifest.to_json(), manifest.path, option="the manifest", kind=None)
    ledger = os.path.join(out, LEDGER_NAME)
    if os.path.exists(ledger):
        os.unlink(ledger)
    return manifest


def _remove_stale(out: str, prior: dict[str, Done], done: dict[str, Done]) -> list[str]:
    """What earlier runs of this command left in OUT that the manifest no longer lists: shards the
    new plan does not have, and temp files of shards a killed run was writing."""
    stale = set(prior) - set(done)
    ours = set(prior) | set(done)
    stale |= {n for n in os.listdir(out) if n.startswith(".tmp-") and any(n.endswith(name) for name in ours)}
    removed = []
    for name in sorted(stale):
        path = os.path.join(out, name)
        if os.path.isfile(path):
            os.unlink(path)
            removed.append(name)
    return removed
