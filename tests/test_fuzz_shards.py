"""Fuzzing shard folders: random truncations, flipped bytes, appended or replaced bytes, deleted
files and edited manifest fields, through `ssl-bf shard` (rerun), `ssl-bf embed --data` and a short
`ssl-bf pretrain`. The contract (fuzz_contract.py): exit 0 or 2, never a traceback; a refusal names
the file (and member) at fault; nothing is written where the command must not write; and an
accepted input gives the numbers the intact shards give (a rerun restores the shards byte for byte).
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz_contract import check_contract, count, fuzz_examples, run_cli, snapshot, watched_files
from shard_data import PRETRAIN, make_folder, make_shards
from tiny_run import each_key_once
from ssl_bf.data.shards import ShardError, read_manifest


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_shards")
    folder = make_folder(str(root / "jpegs"), train_per_class=8, val_per_class=4)
    manifest = make_shards(folder, str(root / "shards"))
    run = str(root / "run")
    code, out = run_cli(["pretrain", *PRETRAIN, f"data.root={manifest}", f"run.dir={run}", "train.epochs=0"])
    assert code == 0, out[-3000:]
    ckpt = os.path.join(run, "checkpoints", "last.pt")
    emb = str(root / "intact.safetensors")
    assert run_cli(["embed", "--checkpoint", ckpt, "--data", manifest, "--split", "train", "--out", emb,
                    "--workers", "0", "--no-progress"])[0] == 0
    from ssl_bf.eval.formats import load_embeddings

    files = sorted(os.listdir(os.path.dirname(manifest)))
    return {"folder": folder, "dir": os.path.dirname(manifest), "ckpt": ckpt, "files": files,
            "intact": load_embeddings(emb)}


OPS = ("truncate", "flip", "append", "delete", "replace", "zero")


@st.composite
def damage(draw, files):
    """(file name, operation, position fraction, a few bytes)."""
    return (draw(st.sampled_from(files)), draw(st.sampled_from(OPS)), draw(st.floats(0, 1)),
            draw(st.binary(min_size=1, max_size=64)))


def _apply(path: str, op: str, where: float, junk: bytes) -> None:
    data = bytearray(open(path, "rb").read())
    at = min(len(data) - 1, int(where * len(data)))
    if op == "delete":
        os.unlink(path)
        return
    if op == "truncate":
        data = data[:at]
    elif op == "flip":
        data[at] ^= 0xFF
    elif op == "append":
        data += junk
    elif op == "replace":
        data[at:at + len(junk)] = junk
    else:  # zero a run of bytes
        data[at:at + 512] = bytes(len(data[at:at + 512]))
    open(path, "wb").write(bytes(data))


def _damaged_copy(pristine, tmp, dmg) -> tuple[str, bool]:
    """A damaged copy of the shard folder; returns (its folder, whether any byte differs)."""
    out = os.path.join(tmp, "shards")
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(pristine["dir"], out)
    name, op, where, junk = dmg
    path = os.path.join(out, name)
    before = open(path, "rb").read()
    _apply(path, op, where, junk)
    changed = not os.path.exists(path) or open(path, "rb").read() != before
    return out, changed


def _files(folder: str) -> dict[str, bytes]:
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))}


@settings(max_examples=fuzz_examples(25))
@given(data=st.data())
def test_fuzz_a_rerun_of_ssl_bf_shard_restores_a_damaged_folder_or_names_what_it_cannot_trust(pristine, tmp_path, data):
    dmg = data.draw(damage(pristine["files"]))
    count("shards: shard rerun", 1)
    out, _ = _damaged_copy(pristine, str(tmp_path), dmg)
    code, text = run_cli(["shard", pristine["folder"], out, "--shard-size", "0.02", "--no-progress"])
    check_contract(code, text, names=("manifest.json",))
    if code == 0:  # everything reused or rewritten: the folder is the intact one, byte for byte
        assert _files(out) == _files(pristine["dir"])
    else:
        assert dmg[0] == "manifest.json", text


def _split_of(name: str) -> str:
    return "test" if name.startswith("test-") else "train"


@settings(max_examples=fuzz_examples(15))
@given(data=st.data())
def test_fuzz_embed_refuses_a_damaged_shard_folder_naming_the_file_and_writes_nothing(pristine, tmp_path, data):
    dmg = data.draw(damage([f for f in pristine["files"] if not f.startswith("test-")]))
    count("shards: embed", 1)
    folder, changed = _damaged_copy(pristine, str(tmp_path), dmg)
    out = os.path.join(str(tmp_path), "out.safetensors")
    if os.path.exists(out):
        os.unlink(out)
    before = snapshot(watched_files(folder))
    code, text = run_cli(["embed", "--checkpoint", pristine["ckpt"], "--data", os.path.join(folder, "manifest.json"),
                          "--split", _split_of(dmg[0]), "--out", out, "--workers", "0", "--no-progress"])
    check_contract(code, text, names=(os.path.join(folder, dmg[0]), os.path.join(folder, "manifest.json")),
                   before=before)
    if dmg[0] != "manifest.json" and changed:
        assert code == 2 and os.path.join(folder, dmg[0]) in text, text  # a changed shard is never read as good
    if code == 0:
        from ssl_bf.eval.formats import load_embeddings

        got = load_embeddings(out)
        assert np.array_equal(got.embeddings, pristine["intact"].embeddings)
        assert np.array_equal(got.labels, pristine["intact"].labels)
    else:
        assert not os.path.exists(out)


@pytest.mark.slow
@settings(max_examples=fuzz_examples(4))
@given(data=st.data())
def test_fuzz_a_short_pretraining_stops_on_a_damaged_shard_naming_it(pristine, tmp_path, data):
    dmg = data.draw(damage([f for f in pristine["files"] if f.startswith("train-")]))
    count("shards: pretrain", 1)
    folder, changed = _damaged_copy(pristine, str(tmp_path), dmg)
    before = snapshot(watched_files(folder))
    run_dir = os.path.join(str(tmp_path), "run")
    shutil.rmtree(run_dir, ignore_errors=True)
    code, text = run_cli(["pretrain", *each_key_once(*PRETRAIN, f"data.root={os.path.join(folder, 'manifest.json')}",
                                                     f"run.dir={run_dir}", "train.epochs=1", "train.batch_size=8",
                                                     "moco.split_bn_groups=2")])
    check_contract(code, text, names=(os.path.join(folder, dmg[0]),), before=before)
    assert code == 2 or not changed, text  # every train shard is read in an epoch of 32 / 8 whole batches


# --- manifest fields ------------------------------------------------------------------------------
json_values = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 40, 2 ** 40) | st.floats(allow_nan=False)
                           | st.text(max_size=12), lambda kids: st.lists(kids, max_size=3)
                           | st.dictionaries(st.text(max_size=6), kids, max_size=3), max_leaves=6)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


@settings(max_examples=fuzz_examples(200))
@given(data=st.data())
def test_fuzz_a_manifest_with_any_field_changed_is_read_or_refused_naming_it(pristine, tmp_path, data):
    count("shards: manifest fields", 1)
    obj = json.load(open(os.path.join(pristine["dir"], "manifest.json")))
    paths = [p for p in _paths(obj) if p]
    where = data.draw(st.sampled_from(paths))
    parent = obj
    for k in where[:-1]:
        parent = parent[k]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[where[-1]]
    else:
        parent[where[-1]] = data.draw(json_values)
    path = str(tmp_path / "manifest.json")
    json.dump(obj, open(path, "w"))
    try:
        m = read_manifest(path)
    except ShardError as e:
        assert path in str(e) and "\n" not in str(e)
        return
    assert json.loads(json.dumps(m.to_json())) == m.to_json()  # what was accepted is a consistent manifest
    assert all(e.samples >= 1 and e.bytes >= 1 and len(e.sha256) == 64 for s in m.splits.values() for e in s.shards)
