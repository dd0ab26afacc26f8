"""One shard opened for reading: checked against its manifest entry, indexed with wids, and its
samples grouped and checked before any image is decoded.

Checks, in order, each a ShardError naming the shard (and the member) and the fix: the file is
there and has the manifest's size (every open); its sha256 is the manifest's (once per dataset:
`VerifiedShards` shares the result with every DataLoader worker); it is a tar file (wids'
`TarFileReader` indexes it with Python's tarfile); its members form the manifest's number of
samples, each with exactly one image member and, for labelled data, a `.cls` member holding a
class index the manifest knows. A member read later that comes back short is refused too.
"""
from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import re
import tarfile
from dataclasses import dataclass
from typing import BinaryIO, Callable, Optional

import torch

from .layout import IMAGE_EXTS, LABEL_EXT, ShardError
from .manifest import FileEntry, Manifest, ShardEntry

HASH_CHUNK = 1 << 20  # bytes read per hash update
LOCK_WAIT_S = 120.0  # a worker killed while hashing must not block the next epoch's workers
_LABEL = re.compile(r"^[0-9]{1,9}$")


def rerun_hint(manifest: Manifest) -> str:
    return f"rerun `ssl-bf shard {manifest.source} {manifest.folder}` to write it again"


def sha256_of(f: BinaryIO) -> str:
    """sha256 (hex) of an open binary file, read from its start."""
    f.seek(0)
    h = hashlib.sha256()
    for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
        h.update(chunk)
    return h.hexdigest()


def _unusable(manifest: Manifest, entry: FileEntry, what: str, err: Optional[OSError], size: int = -1) -> ShardError:
    path = manifest.file_path(entry)
    if isinstance(err, FileNotFoundError):
        return ShardError(f"{what} {path} (listed in {manifest.path}) is missing; {rerun_hint(manifest)}")
    if err is not None:
        return ShardError(f"{what} {path} cannot be read ({err.strerror or err})")
    return ShardError(f"{what} {path} is {size} bytes but {manifest.path} says {entry.bytes}: it was cut short "
                      f"or replaced; {rerun_hint(manifest)}")


def check_present(manifest: Manifest, entry: FileEntry, what: str) -> None:
    """A file the manifest lists is there with the listed size (a stat, no read)."""
    try:
        size = os.stat(manifest.file_path(entry)).st_size
    except OSError as e:
        raise _unusable(manifest, entry, what, e) from None
    if size != entry.bytes:
        raise _unusable(manifest, entry, what, None, size)


def check_file(manifest: Manifest, entry: FileEntry, what: str) -> BinaryIO:
    """A file the manifest lists, opened, after checking it has the listed size."""
    try:
        f = open(manifest.file_path(entry), "rb")
        size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise _unusable(manifest, entry, what, e) from None
    if size != entry.bytes:
        f.close()
        raise _unusable(manifest, entry, what, None, size)
    return f


def check_sha256(manifest: Manifest, entry: FileEntry, f: BinaryIO, what: str) -> None:
    got = sha256_of(f)
    if got != entry.sha256:
        raise ShardError(f"{what} {manifest.file_path(entry)}: its sha256 {got[:16]}... is not the "
                         f"{entry.sha256[:16]}... that {manifest.path} lists (a corrupt file, or a manifest of "
                         f"other shards); {rerun_hint(manifest)}")


class VerifiedShards:
    """Which shards of one dataset have passed the sha256 check: a flag per shard in shared memory,
    so the dataset's DataLoader workers (this epoch's and the next ones') hash each shard once."""

    def __init__(self, count: int) -> None:
        self.flags = torch.zeros(count, dtype=torch.uint8).share_memory_()  # (S,) 1: verified
        self.lock = multiprocessing.Lock()

    def ensure(self, slot: int, check: Callable[[], None]) -> None:
        """Run `check` unless shard `slot` has passed it (here or in another worker)."""
        if self.flags[slot]:
            return
        locked = self.lock.acquire(timeout=LOCK_WAIT_S)
        try:
            if not self.flags[slot]:
                check()
                self.flags[slot] = 1
        finally:
            if locked:
                self.lock.release()


@dataclass(frozen=True)
class Sample:
    """One sample of a shard: its key, the reader's index of its image member, and its label."""

    key: str
    image: int
    label: int


def _split_name(name: str) -> tuple[str | None, str | None]:
    from webdataset.tariterators import base_plus_ext

    return base_plus_ext(name)


class ShardFile:
    """A shard open for reading (`len`, `sample(i)`, `image_bytes(i)`); `close()` when done."""

    def __init__(self, manifest: Manifest, entry: ShardEntry, verified: Callable[[Callable[[], None]], None]):
        self.manifest, self.entry = manifest, entry
        self.path = manifest.file_path(entry)
        self.file = check_file(manifest, entry, "shard")
        try:
            verified(lambda: check_sha256(manifest, entry, self.file, "shard"))
            self.reader = self._index()
            self.samples = self._group(self.reader.names())
        except BaseException:
            self.file.close()
            raise

    def __len__(self) -> int:
        return len(self.samples)

    def where(self, member: str) -> str:
        return f"shard {self.path} member {member}"

    def _index(self):
        from wids.wids_tar import TarFileReader

        self.file.seek(0)
        try:
            return TarFileReader(self.file, index_file=None, verbose=False)
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            raise ShardError(f"shard {self.path} is not a readable tar file ({' '.join(str(e).split())[:200]}); "
                             f"{rerun_hint(self.manifest)}") from None

    def _group(self, names: list[str]) -> list[Sample]:
        """The members as samples: consecutive members sharing a key (webdataset's rule)."""
        groups: list[tuple[str, list[tuple[int, str]]]] = []
        seen: set[str] = set()
        for i, name in enumerate(names):
            key, ext = _split_name(name)
            if key is None:
                raise ShardError(f"{self.where(name)}: not a sample member (KEY.ext); {rerun_hint(self.manifest)}")
            if not groups or groups[-1][0] != key:
                if key in seen:
                    raise ShardError(f"{self.where(name)}: the key {key} appears in two places of the shard; "
                                     f"{rerun_hint(self.manifest)}")
                seen.add(key)
                groups.append((key, []))
            groups[-1][1].append((i, ext.lower()))
        if len(groups) != self.entry.samples:
            last = f" (the last one read: {groups[-1][0]})" if groups else ""
            raise ShardError(f"shard {self.path} holds {len(groups)} samples{last} but {self.manifest.path} says "
                             f"{self.entry.samples}: a short or altered shard; {rerun_hint(self.manifest)}")
        return [self._sample(key, members) for key, members in groups]

    def _sample(self, key: str, members: list[tuple[int, str]]) -> Sample:
        exts = [ext for _, ext in members]
        if len(set(exts)) != len(exts):
            raise ShardError(f"{self.where(key)}: a member appears twice; {rerun_hint(self.manifest)}")
        images = [(i, ext) for i, ext in members if ext in IMAGE_EXTS]
        if len(images) != 1:
            what = "no image member" if not images else f"{len(images)} image members"
            raise ShardError(f"{self.where(key)}: {what} ({', '.join(IMAGE_EXTS)}); {rerun_hint(self.manifest)}")
        label = -1
        if self.manifest.labelled:
            cls = [i for i, ext in members if ext == LABEL_EXT]
            if not cls:
                raise ShardError(f"{self.where(key + '.' + LABEL_EXT)} is missing: a labelled shard needs the "
                                 f"class of every sample; {rerun_hint(self.manifest)}")
            label = self._label(key, self._member_bytes(cls[0])[1])
        return Sample(key, images[0][0], label)

    def _label(self, key: str, data: bytes) -> int:
        text = data.decode("ascii", errors="replace").strip()
        classes = len(self.manifest.classes)
        if not _LABEL.match(text) or int(text) >= classes:
            raise ShardError(f"{self.where(key + '.' + LABEL_EXT)} holds {text[:20]!r}, not a class index in "
                             f"[0, {classes}); {rerun_hint(self.manifest)}")
        return int(text)

    def _member_bytes(self, i: int) -> tuple[str, bytes]:
        """(name, bytes) of member i, refused when the file ends inside it."""
        name, stream = self.reader.get_file(i)
        data = stream.getvalue() if isinstance(stream, io.BytesIO) else stream.read()
        size = int(self.reader.index[i][1])
        if len(data) != size:
            raise ShardError(f"{self.where(name)} is cut short ({len(data)} of {size} bytes); "
                             f"{rerun_hint(self.manifest)}")
        return name, data

    def sample(self, i: int) -> Sample:
        return self.samples[i]

    def image_bytes(self, i: int) -> tuple[str, bytes]:
        """(member name, its bytes) of sample i's image."""
        return self._member_bytes(self.samples[i].image)

    def close(self) -> None:
        try:
            self.reader.close()
        finally:
            self.file.close()
