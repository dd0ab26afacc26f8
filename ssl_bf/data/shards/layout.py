"""The shard format's fixed facts: file names, sample keys, member names and the error type.

A shard is a POSIX tar of webdataset samples: `KEY.<ext>` (the image file's bytes, unchanged;
ext is the source file's extension in lower case) and, for labelled data, `KEY.cls` (the class
index as decimal text). KEY is the image's path relative to its split folder, percent-encoded
(every byte but letters, digits, `_-~` and `/`), with `.` written `%2E` too: webdataset splits a
member name at the first dot of its file name, so a key holds none, and two files that differ
only in their extension (`a.jpg`, `a.png`) keep two keys.
"""
from __future__ import annotations

import os
from urllib.parse import quote, unquote_to_bytes

from ..base import DataError

FORMAT = "ssl-bf-shards"
VERSION = 1
MANIFEST_NAME = "manifest.json"
LEDGER_NAME = ".ssl-bf-shard-ledger.json"  # the writer's record of finished shards while it runs
LABEL_EXT = "cls"
IMAGE_EXTS = ("jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff")  # as the folder readers take
SPLITS = ("train", "test")


def shard_name(split: str, index: int) -> str:
    """The file name of a split's shard number `index`: `train-000012.tar`."""
    return f"{split}-{index:06d}.tar"


def index_name(split: str) -> str:
    """The file name of a split's sample list (key and label per line, manifest order)."""
    return f"{split}-samples.tsv"


def encode_key(relpath: str) -> str:
    """The sample key of an image's relative path (any bytes the file system allows)."""
    raw = os.fsencode(relpath.replace(os.sep, "/"))
    return quote(raw, safe="/").replace(".", "%2E")


def decode_key(key: str) -> str:
    """The relative path a key encodes (`encode_key`'s inverse)."""
    return os.fsdecode(unquote_to_bytes(key))


def image_ext(path: str) -> str:
    """The member extension of an image file: its own extension in lower case, without the dot."""
    return os.path.splitext(path)[1][1:].lower()


class ShardError(DataError):
    """A manifest, shard or member that cannot be used; one line naming it and the fix.

    It survives a DataLoader worker: PyTorch re-raises a worker's exception in the main process as
    `type(err)(text of the worker's traceback)`; this class keeps only the original message from
    that text, so the command still prints one line and no traceback.
    """

    def __init__(self, message: str = "") -> None:
        name = type(self).__name__
        if message.startswith(f"Caught {name} ") and "Traceback" in message:
            last = message.rstrip().splitlines()[-1]  # "<module>.ShardError: <the message>"
            message = last.split(f"{name}: ", 1)[-1]
        super().__init__(" ".join(str(message).split()))
