"""`ssl-bf shard` and the shard format: keys, the shard plan, what the writer writes (checked with
Python's tarfile, independently of the readers), reruns, refusals, and the readers' checks."""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz_contract import count, fuzz_examples, run_cli
from shard_data import (copy_shards, cut_image, drop_cls, flip_byte, load, make_folder, make_shards, read_samples,
                        restamp, restamped, save, shard_entries)
from ssl_bf.data import build_dataset
from ssl_bf.data.shards import ShardError, decode_key, encode_key, read_manifest
from ssl_bf.data.shards.layout import LEDGER_NAME
from ssl_bf.data.shards.plan import TAR_END, cut_shards


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(str(tmp_path_factory.mktemp("jpegs")))


@pytest.fixture(scope="module")
def shards(folder, tmp_path_factory):
    return make_shards(folder, str(tmp_path_factory.mktemp("shards") / "out"))


def _folder_images(folder: str) -> dict[str, dict[str, tuple[str, int]]]:
    """split -> {key: (path, label)} as the folder readers list them."""
    out = {}
    for split, sub in (("train", "train"), ("test", "val")):
        ds = build_dataset("imagefolder", folder, split)
        out[split] = {encode_key(os.path.relpath(p, os.path.join(folder, sub))): (p, y) for p, y in ds.samples}
    return out


# --- keys and the plan ---------------------------------------------------------------------------
segment = st.text(st.characters(exclude_characters="/\x00", exclude_categories=("Cs",)), min_size=1,
                  max_size=12).filter(lambda s: s not in (".", ".."))


@settings(max_examples=fuzz_examples(200))
@given(st.lists(segment, min_size=1, max_size=4))
def test_a_key_encodes_any_relative_path_reversibly_and_webdataset_splits_it_at_the_extension(parts):
    from webdataset.tariterators import base_plus_ext

    count("shards: keys", 1)
    rel = "/".join(parts)
    key = encode_key(rel)
    assert decode_key(key) == rel
    assert "." not in key and key.isascii() and "\t" not in key and "\n" not in key
    assert base_plus_ext(f"{key}.jpg") == (key, "jpg")


def test_keys_differ_for_files_that_differ_only_in_their_extension():
    assert encode_key("a/x.jpg") != encode_key("a/x.png") and encode_key("a/x.jpg") == "a/x%2Ejpg"


@settings(max_examples=fuzz_examples(200))
@given(st.lists(st.integers(1, 5000), max_size=60), st.integers(1, 20000))
def test_the_shard_cuts_cover_every_sample_in_order_and_each_shard_is_as_full_as_the_target_allows(sizes, target):
    count("shards: cuts", 1)
    cuts = cut_shards(sizes, target)
    assert cuts == cut_shards(list(sizes), target)  # a pure function of the sizes
    assert [i for a, b in cuts for i in range(a, b)] == list(range(len(sizes)))
    for k, (a, b) in enumerate(cuts):
        used = TAR_END + sum(sizes[a:b])
        assert b > a and (used <= target or b - a == 1)
        if k + 1 < len(cuts):  # the next sample would not have fitted
            assert used + sizes[b] > target


# --- what the writer writes ----------------------------------------------------------------------
def test_every_image_is_written_once_with_its_bytes_and_class_and_the_manifest_describes_the_files(folder, shards):
    m = read_manifest(shards)
    images = _folder_images(folder)
    assert m.classes == tuple(sorted(os.listdir(os.path.join(folder, "train"))))
    for split in ("train", "test"):
        seen = {}
        for entry in m.splits[split].shards:
            path = os.path.join(m.folder, entry.name)
            data = open(path, "rb").read()
            assert (len(data), hashlib.sha256(data).hexdigest()) == (entry.bytes, entry.sha256)
            samples = read_samples(path)
            assert len(samples) == entry.samples
            for s in samples:
                file, label = images[split][s["__key__"]]
                assert s["jpg"] == open(file, "rb").read() and s["cls"] == str(label).encode()
                seen[s["__key__"]] = entry.name
        assert set(seen) == set(images[split])  # every image once (keys are unique)
        lines = open(os.path.join(m.folder, f"{split}-samples.tsv")).read().splitlines()
        assert [line.split("\t")[0] for line in lines] == [s["__key__"] for e in m.splits[split].shards
                                                          for s in read_samples(os.path.join(m.folder, e.name))]
    assert not os.path.exists(os.path.join(m.folder, LEDGER_NAME))
    assert json.load(open(shards))["total"]["samples"] == 64 + 32


def test_shard_sizes_are_what_the_plan_predicts(shards):
    """The plan's byte count per sample is exact: a shard is its samples, the end blocks, padded
    to tar's 10240-byte records."""
    from ssl_bf.data.shards.plan import Image, sample_bytes

    m = read_manifest(shards)
    for entry in m.splits["train"].shards:
        samples = read_samples(os.path.join(m.folder, entry.name))
        predicted = TAR_END + sum(sample_bytes(Image(f"x/{s['__key__']}.jpg", decode_key(s["__key__"]) + "",
                                                     int(s["cls"]), len(s["jpg"]), 0), True) for s in samples)
        assert entry.bytes == -(-predicted // 10240) * 10240


def test_sorted_order_is_the_folder_readers_order_and_shuffled_is_a_seeded_permutation(folder, tmp_path):
    sorted_m = read_manifest(make_shards(folder, str(tmp_path / "sorted"), "--order", "sorted"))
    folder_keys = list(_folder_images(folder)["train"])
    dataset = build_dataset("shards", sorted_m.path, "train")
    assert [name.split(":", 1)[1] for name, _ in dataset.samples] == folder_keys
    a = build_dataset("shards", make_shards(folder, str(tmp_path / "a"), "--seed", "3"), "train").samples
    b = build_dataset("shards", make_shards(folder, str(tmp_path / "b"), "--seed", "3"), "train").samples
    c = build_dataset("shards", make_shards(folder, str(tmp_path / "c"), "--seed", "4"), "train").samples
    assert a == b and a != c and sorted(k for k, _ in a) != [k for k, _ in a]
    assert sorted(n.split(":")[1] for n, _ in a) == sorted(folder_keys)


def test_the_shards_are_byte_identical_when_written_again(folder, shards, tmp_path):
    again = make_shards(folder, str(tmp_path / "again"))
    assert load(again)["splits"] == load(shards)["splits"]


# --- reruns --------------------------------------------------------------------------------------
def _shard(folder, out, *extra):
    return run_cli(["shard", folder, out, "--shard-size", "0.02", "--no-progress", *extra])


def test_a_rerun_reuses_every_shard_and_rewrites_a_corrupt_or_missing_one_as_it_was(folder, shards, tmp_path):
    out = str(tmp_path / "out")
    manifest = copy_shards(os.path.dirname(shards), out)
    before = {n: open(os.path.join(out, n), "rb").read() for n in os.listdir(out)}
    code, text = _shard(folder, out)
    assert code == 0 and "shards written 0, reused 17" in text, text
    entries = shard_entries(load(manifest))
    with open(os.path.join(out, entries[2]["name"]), "r+b") as f:  # flip a byte inside a JPEG
        f.seek(700)
        byte = f.read(1)
        f.seek(700)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.unlink(os.path.join(out, entries[5]["name"]))
    code, text = _shard(folder, out)
    assert code == 0 and "shards written 2, reused 15" in text, text
    assert {n: open(os.path.join(out, n), "rb").read() for n in os.listdir(out)} == before


def test_an_edited_image_rewrites_only_its_shard(folder, tmp_path):
    src = str(tmp_path / "jpegs")
    shutil.copytree(folder, src)
    out = str(tmp_path / "out")
    make_shards(src, out)
    victim = os.path.join(src, "val", sorted(os.listdir(os.path.join(src, "val")))[1], "val_0002.jpg")
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 10, 10)).save(victim, quality=90)
    code, text = _shard(src, out)
    assert code == 0 and "shards written 1, reused 16" in text, text
    dataset = build_dataset("shards", out, "test")
    row = [i for i, (name, _) in enumerate(dataset.samples) if decode_key(name.split(":")[1]) ==
           os.path.relpath(victim, os.path.join(src, "val"))][0]
    assert dataset[row][0].float().mean(dim=(1, 2)).argmax() == 0  # the new red image


def test_an_interrupted_run_resumes_from_its_ledger_and_ends_as_a_straight_run(folder, shards, tmp_path):
    from ssl_bf.data.shards import writer

    out = str(tmp_path / "out")
    calls = {"n": 0}
    real = writer.write_shard

    def stop_at_the_fourth_shard(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kw)

    writer.write_shard = stop_at_the_fourth_shard
    try:
        with pytest.raises(KeyboardInterrupt):
            writer.write_shards(folder, out, 0.02, progress=False)
    finally:
        writer.write_shard = real
    assert os.path.exists(os.path.join(out, LEDGER_NAME)) and not os.path.exists(os.path.join(out, "manifest.json"))
    code, text = _shard(folder, out)
    assert code == 0 and "shards written 14, reused 3" in text, text
    assert load(os.path.join(out, "manifest.json")) == load(shards)
    assert sorted(os.listdir(out)) == sorted(os.listdir(os.path.dirname(shards)))  # no ledger, no temp file


# --- refusals ------------------------------------------------------------------------------------
def _break_image(src: str) -> str:
    victim = os.path.join(src, "train", sorted(os.listdir(os.path.join(src, "train")))[0], "train_0003.jpg")
    data = open(victim, "rb").read()
    open(victim, "wb").write(data[: len(data) // 2])  # a JPEG cut in half
    return victim


def test_an_unreadable_image_is_refused_or_skipped_and_listed(folder, tmp_path):
    src = str(tmp_path / "jpegs")
    shutil.copytree(folder, src)
    victim = _break_image(src)
    out = str(tmp_path / "out")
    code, text = _shard(src, out)
    assert code == 2 and victim in text and "--skip-unreadable" in text and text.count("\n") == 1, text
    assert not os.path.exists(os.path.join(out, "manifest.json"))
    code, text = _shard(src, out, "--skip-unreadable")
    assert code == 0 and "skipped (unreadable)" in text, text
    m = read_manifest(out)
    assert m.splits["train"].samples == 63 and [s["path"] for s in m.skipped] == [os.path.relpath(victim, src + "/train")]
    assert len(build_dataset("shards", out, "train").samples) == 63
    code, text = _shard(src, out)  # the flag is part of the promise: without it, refused again
    assert code == 2 and victim in text, text


@pytest.mark.parametrize("case", ["foreign file", "other settings", "out is a file", "src missing"])
def test_an_out_folder_it_did_not_write_or_other_settings_are_refused_and_left_alone(folder, shards, tmp_path, case):
    out = tmp_path / "out"
    src = folder
    args = []
    if case == "foreign file":
        out.mkdir()
        (out / "train-000000.tar").write_bytes(b"somebody's data")
        says = "train-000000.tar"
    elif case == "other settings":
        copy_shards(os.path.dirname(shards), str(out))
        args, says = ["--seed", "5"], "seed: 0 there, 5 now"
    elif case == "out is a file":
        out.write_bytes(b"x")
        says = "is a file"
    else:
        src, says = str(tmp_path / "nowhere"), "is not a folder"
    before = {p: open(p, "rb").read() for p in [str(out)] if os.path.isfile(p)}
    listing = sorted(os.listdir(out)) if out.is_dir() else None
    code, text = _shard(src, str(out), *args)
    assert code == 2 and says in text and "Traceback" not in text and text.count("\n") == 1, text
    assert (sorted(os.listdir(out)) if out.is_dir() else None) == listing
    assert all(open(p, "rb").read() == b for p, b in before.items())


def test_flat_and_unlabeled_folders_give_a_test_split_that_is_the_train_split(folder, tmp_path):
    flat = str(tmp_path / "flat")
    shutil.copytree(os.path.join(folder, "val"), flat)
    m = read_manifest(make_shards(flat, str(tmp_path / "flat-out")))
    assert m.splits["test"] == m.splits["train"] and m.labelled
    with pytest.warns(UserWarning, match="test split is the train split"):
        build_dataset("shards", m.path, "test")
    u = read_manifest(make_shards(flat, str(tmp_path / "u-out"), "--unlabeled"))
    assert u.classes == () and not u.labelled and u.splits["test"] == u.splits["train"]
    assert all(set(s) == {"__key__", "jpg"} for s in read_samples(os.path.join(u.folder, u.splits["train"].shards[0].name)))
    ds = build_dataset("shards", u.path, "train", load_size=16)
    assert ds[0][1] == -1 and {y for _, y in ds.samples} == {-1} and ds.classes == []


# --- the readers' checks -------------------------------------------------------------------------
def _first(obj):
    return shard_entries(obj)[0]["name"]


def _set_sha(obj):
    shard_entries(obj)[0]["sha256"] = "0" * 64
    return obj


def _label(value):
    def edit(samples):
        samples[0]["cls"] = str(value).encode()
        return samples
    return edit


READER_CASES = {  # name -> (break(manifest path, shard path), words the error must contain)
    "missing shard": (lambda m, s: os.unlink(s), ("{shard}", "is missing")),
    "cut shard": (lambda m, s: open(s, "r+b").truncate(5000), ("{shard}", "is 5000 bytes")),
    "corrupt shard": (lambda m, s: flip_byte(s), ("{shard}", "sha256")),
    "manifest sha256": (lambda m, s: save(m, _set_sha(load(m))), ("{shard}", "sha256")),
    "empty shard": (lambda m, s: (open(s, "wb").write(b"\0" * 10240), restamp(m, os.path.basename(s))),
                    ("{shard}", "holds 0 samples")),
    "cls missing": (restamped(drop_cls), ("{shard} member", ".cls is missing")),
    "undecodable member": (restamped(cut_image), ("{shard} member", ".jpg does not decode")),
    "short shard": (restamped(lambda x: x[:-2]), ("{shard}", "holds 4 samples", "says 6")),
    "not a tar": (lambda m, s: (open(s, "wb").write(os.urandom(20480)), restamp(m, os.path.basename(s))),
                  ("{shard}", "not a readable tar file")),
    "label out of range": (restamped(_label(9)), ("{shard} member", ".cls holds '9'")),
}


@pytest.mark.parametrize("case", sorted(READER_CASES))
def test_the_readers_refuse_a_bad_shard_naming_it_and_the_member(shards, tmp_path, case):
    manifest = copy_shards(os.path.dirname(shards), str(tmp_path / "out"))
    shard = os.path.join(tmp_path / "out", _first(load(manifest)))
    brk, says = READER_CASES[case]
    brk(manifest, shard)
    with pytest.raises(ShardError) as err:
        dataset = build_dataset("shards", manifest, "train", load_size=16)
        for i in range(len(dataset)):
            dataset[i]
    text = str(err.value)
    assert all(w.replace("{shard}", shard) in text for w in says), text
    assert "\n" not in text and f"rerun `ssl-bf shard " in text, text  # the fix


MANIFEST_CASES = {  # name -> (edit of the decoded manifest, or of its text; words of the error)
    "not json": (lambda t: t[:-20], "not valid JSON"),
    "nan": (lambda t: t.replace('"seed": 0', '"seed": NaN'), "not valid JSON"),
    "duplicate key": (lambda t: t.replace('"seed": 0', '"seed": 0, "seed": 1'), "appears twice"),
    "another format": (lambda o: {**o, "format": "webdataset"}, "not an ssl-bf shard manifest"),
    "newer version": (lambda o: {**o, "version": 2}, "format version 2"),
    "path as a name": (lambda o: _entry(o, name="../x.tar"), "splits.train.shards[0].name"),
    "sub-folder name": (lambda o: _entry(o, name="a/x.tar"), "splits.train.shards[0].name"),
    "no samples": (lambda o: _entry(o, samples=0), "splits.train.shards[0].samples must be at least 1"),
    "bool count": (lambda o: _entry(o, samples=True), "must be int, got bool"),
    "float bytes": (lambda o: _entry(o, bytes=1.5), "splits.train.shards[0].bytes must be int"),
    "sha not hex": (lambda o: _entry(o, sha256="Z" * 64), "not 64 lower-case hex digits"),
    "total": (lambda o: {**o, "total": {**o["total"], "samples": 1}}, "total is"),
    "no train": (lambda o: {**o, "splits": {"test": o["splits"]["test"]}}, "must hold train"),
    "unknown split": (lambda o: {**o, "splits": {**o["splits"], "val": o["splits"]["test"]}}, "'val'"),
    "classes": (lambda o: {**o, "classes": ["a", "a", "b", "c"]}, "classes must be a list of distinct strings"),
    "split count": (lambda o: _split(o, samples=3), "splits.train.samples is 3"),
    "same file twice": (lambda o: _entry(o, name=o["splits"]["test"]["shards"][0]["name"]), "in two different ways"),
}


def _entry(obj, **change):
    obj["splits"]["train"]["shards"][0].update(change)
    return obj


def _split(obj, **change):
    obj["splits"]["train"].update(change)
    return obj


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_a_bad_manifest_is_refused_naming_it_and_the_field(shards, tmp_path, case):
    edit, says = MANIFEST_CASES[case]
    path = str(tmp_path / "manifest.json")
    text = open(shards).read()
    if case in ("not json", "nan", "duplicate key"):
        open(path, "w").write(edit(text))
    else:
        save(path, edit(json.loads(text)))
    with pytest.raises(ShardError) as err:
        read_manifest(path)
    assert path in str(err.value) and says in str(err.value), str(err.value)


def _raise_shard_error(_):
    raise ShardError("shard /x/train-000001.tar member k%2Ejpg.jpg does not decode")


class _Bad(__import__("torch").utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        _raise_shard_error(i)


def test_a_shard_error_in_a_dataloader_worker_reaches_the_command_as_its_own_line():
    import torch

    with pytest.raises(ShardError) as err:
        next(iter(torch.utils.data.DataLoader(_Bad(), num_workers=1)))
    assert str(err.value) == "shard /x/train-000001.tar member k%2Ejpg.jpg does not decode"


def test_a_dataset_hashes_each_shard_once_however_many_workers_read_it(shards, tmp_path):
    """The sha256 check is shared by a dataset's workers (and kept for its later passes): after one
    pass, a same-size change goes unseen by that dataset and is refused by a new one."""
    import torch

    manifest = copy_shards(os.path.dirname(shards), str(tmp_path / "out"))
    dataset = build_dataset("shards", manifest, "train", load_size=16)
    for _ in torch.utils.data.DataLoader(dataset, batch_size=8, num_workers=2):
        pass
    assert dataset.verified.flags.tolist() == [1] * len(dataset.shards)
    shard = os.path.join(tmp_path / "out", _first(load(manifest)))
    flip_byte(shard, at=2000)
    with pytest.raises(ShardError, match="sha256"):
        build_dataset("shards", manifest, "train", load_size=16)[0]


def test_a_subset_and_a_held_out_tail_keep_the_manifest_order(shards):
    full = build_dataset("shards", shards, "train", load_size=16)
    names = full.samples
    part = build_dataset("shards", shards, "train", load_size=16, subset=40)
    held = part.split_last(10)
    assert part.samples == names[:30] and held.samples == names[30:40]
    assert np.array_equal(held[0][0].numpy(), full[30][0].numpy()) and held[0][1] == names[30][1]


def test_any_file_name_becomes_a_key_and_comes_back(folder, tmp_path):
    """Dots, percent signs, spaces, non-ASCII and even non-UTF-8 bytes in file names: each image gets
    its own key, and the key decodes back to its relative path."""
    src = tmp_path / "src"
    (src / "train" / "c").mkdir(parents=True)
    data = open(build_dataset("imagefolder", folder, "train").samples[0][0], "rb").read()
    names = [b"a.b.jpg", b"a.b.png", b"100%.jpg", b"two words.jpg", "caf\u00e9.jpg".encode(), b"bad\xff.jpg"]
    for name in names:
        with open(os.path.join(os.fsencode(str(src / "train" / "c")), name), "wb") as f:
            f.write(data)
    code, text = run_cli(["shard", str(src), str(tmp_path / "out"), "--shard-size", "0.01", "--no-progress",
                          "--order", "sorted"])
    assert code == 0, text
    dataset = build_dataset("shards", str(tmp_path / "out"), "train", load_size=16)
    rels = [decode_key(name.split(":", 1)[1]) for name, _ in dataset.samples]
    assert sorted(os.fsencode(r) for r in rels) == sorted(b"c/" + n for n in names)
    assert all(dataset[i][0].shape == (3, 16, 16) for i in range(len(dataset)))
