"""WebDataset tar shards: written by `ssl-bf shard`, read as `data.name: shards`.

A shard folder holds `{split}-NNNNNN.tar` shards of `KEY.<ext>` + `KEY.cls` samples (layout.py),
one `{split}-samples.tsv` sample list per split, and `manifest.json` (manifest.py), which lists
every file with its size and sha256. Modules, bottom to top:

- layout     file names, sample keys, ShardError (one line, also out of a DataLoader worker)
- manifest   the manifest's fields, checked when read
- tar_access one shard opened for reading: size, sha256 (once per dataset), wids index, samples
- dataset    a split as a map-style dataset (evaluation, the monitor); build_shards
- order      pretraining's epoch order: a function of (seed, epoch), exact from any step
- stream     pretraining's loader: workers stream their own shards and cut two crops per image
- plan       `ssl-bf shard`: the images in order and the shard each goes to
- writer     `ssl-bf shard`: shards, sample lists, manifest, the rerun ledger
- cli        `ssl-bf shard`'s arguments
"""
from .dataset import ShardImageDataset, build_shards
from .layout import ShardError, decode_key, encode_key
from .manifest import Manifest, read_manifest
from .stream import ShardCropStream

__all__ = ["Manifest", "ShardCropStream", "ShardError", "ShardImageDataset", "build_shards", "decode_key",
           "encode_key", "read_manifest"]
