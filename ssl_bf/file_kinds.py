"""What an existing file holds, recognised by its first bytes (never by its name).

The output guard (`ssl_bf/outputs.py`) refuses to replace a file of one kind with another: an
embeddings file is never overwritten by a torch pickle, a PNG by JSON. Only the file's head is
read (and a zip archive's table of contents); nothing in it is decoded or executed.
"""
from __future__ import annotations

import codecs
import enum
import os
import struct
import zipfile
from typing import Optional

HEAD_BYTES = 8192  # how much of a file the text test reads

# torch's legacy (non-zip) format starts with the pickled magic number 0x1950a86a20f9469cfc6c
_TORCH_LEGACY_HEAD = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."


class FileKind(enum.Enum):
    """The kinds of file ssl-bf writes, plus OTHER for anything else; the value reads in a sentence."""

    TORCH = "a torch file"
    SAFETENSORS = "a safetensors file"
    JSON = "JSON"
    TEXT = "text (YAML, Markdown, CSV, ...)"
    PNG = "a PNG image"
    NPY = "a numpy .npy array"
    NPZ = "a numpy .npz archive"
    PICKLE = "a Python pickle"
    OTHER = "binary data of another kind"


def file_kind(path: str) -> Optional[FileKind]:
    """The kind of the regular file at `path`, or None when it holds nothing (0 bytes or blank lines).

    Raises OSError when the file cannot be read."""
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
        size = os.fstat(f.fileno()).st_size
    if not head.strip(b" \t\r\n"):  # empty, or only blank lines: nothing to lose
        return None
    return _binary_kind(path, head, size) or _text_kind(head) or FileKind.OTHER


def _binary_kind(path: str, head: bytes, size: int) -> Optional[FileKind]:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return FileKind.PNG
    if head.startswith(b"\x93NUMPY"):
        return FileKind.NPY
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(path)
    if head.startswith(_TORCH_LEGACY_HEAD):
        return FileKind.TORCH
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return FileKind.PICKLE
    if _is_safetensors(head, size):
        return FileKind.SAFETENSORS
    return None


def _zip_kind(path: str) -> FileKind:
    """A zip archive: torch's (a `data.pkl` record), numpy's .npz (only .npy members) or another."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return FileKind.OTHER
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return FileKind.TORCH
    if names and all(n.endswith(".npy") for n in names):
        return FileKind.NPZ
    return FileKind.OTHER


def _is_safetensors(head: bytes, size: int) -> bool:
    """8 bytes: the little-endian length of a JSON header that starts right after them."""
    if len(head) < 10:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return 2 <= header_len <= size - 8 and head[8:9] == b"{"


def _text_kind(head: bytes) -> Optional[FileKind]:
    """JSON (JSON lines too) or other UTF-8 text; None for bytes that are not text."""
    if b"\x00" in head:
        return None
    try:
        text = codecs.getincrementaldecoder("utf-8-sig")().decode(head, final=False)  # a cut last char is fine
    except UnicodeDecodeError:
        return None
    if any(ord(c) < 32 and c not in "\t\n\r\f\v" for c in text[:HEAD_BYTES]):
        return None
    return FileKind.JSON if text.lstrip()[:1] in ("{", "[") else FileKind.TEXT
