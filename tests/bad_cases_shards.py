"""Bad inputs around WebDataset shards (issue 24): `ssl-bf shard`, and `embed`, `linear` and
`pretrain` on a shard folder that is damaged (run by tests/test_bad_inputs.py).

Every case exits 2 with one line naming the file (the shard and the member where there is one)
or the option, prints no traceback, and leaves the shard folder (and what else it watches)
byte-identical. Each case's setup copies a small intact fixture into its scratch folder:
{tmp}/jpegs (4 classes of Fashion-MNIST JPEGs), {tmp}/shards (written from it by `ssl-bf shard`)
and {tmp}/rgb.pt (an untrained 3-channel checkpoint of the tiny preset).
"""
from __future__ import annotations

import os
import shutil

from bad_inputs_harness import Case
from shard_data import (PRETRAIN, cut_image, drop_cls, flip_byte, load, make_folder, make_shards, restamp, restamped,
                        save, shard_entries)
from tiny_run import each_key_once

# ------------------------------------------------------------------------------------------------
# BEGIN issue 24 (shards) cases
# ------------------------------------------------------------------------------------------------
MANIFEST = "{tmp}/shards/manifest.json"
SHARD0 = "{tmp}/shards/train-000000.tar"  # the first train shard, which every case below breaks
NP = "--no-progress"
EMBED = ["embed", "--checkpoint", "{tmp}/rgb.pt", "--data", MANIFEST, "--split", "train",
         "--out", "{tmp}/out.safetensors", "--workers", "0", NP]
PRETRAIN_ARGS = ["pretrain", *each_key_once(*PRETRAIN, f"data.root={MANIFEST}", "run.dir={tmp}/new", "train.epochs=1",
                                            "train.batch_size=8", "moco.split_bn_groups=2")]
LINEAR = ["linear", "--protocol", "mocov2", "--checkpoint", "{tmp}/rgb.pt", "--data", MANIFEST, "--epochs", "1",
          "--batch-size", "8", "--workers", "0", "--device", "cpu", NP]
SHARD = ["shard", "{tmp}/jpegs", "{tmp}/out", "--shard-size", "0.02", NP]


def _fixture(env) -> str:
    """The intact jpegs, shards and 3-channel checkpoint, made once per test session."""
    from ssl_bf.cli import main

    root = os.path.join(env.root, "shards-fixture")
    if not os.path.isfile(os.path.join(root, "rgb.pt")):
        os.makedirs(root, exist_ok=True)
        make_shards(make_folder(os.path.join(root, "jpegs"), train_per_class=8, val_per_class=4),
                    os.path.join(root, "shards"))
        run = os.path.join(root, "run")
        assert main(["pretrain", *PRETRAIN, f"data.root={root}/shards/manifest.json", f"run.dir={run}",
                     "train.epochs=0"]) == 0
        shutil.copyfile(os.path.join(run, "checkpoints", "last.pt"), os.path.join(root, "rgb.pt"))
    return root


def intact(env, tmp):
    root = _fixture(env)
    for name in ("jpegs", "shards"):
        shutil.copytree(os.path.join(root, name), os.path.join(tmp, name))
    shutil.copyfile(os.path.join(root, "rgb.pt"), os.path.join(tmp, "rgb.pt"))


def broken(brk):
    """Setup: the intact fixture, then `brk(manifest path, first train shard path)`."""
    def setup(env, tmp):
        intact(env, tmp)
        manifest = os.path.join(tmp, "shards", "manifest.json")
        brk(manifest, os.path.join(tmp, "shards", shard_entries(load(manifest))[0]["name"]))
    return setup


def _manifest_sha(manifest, shard):
    obj = load(manifest)
    shard_entries(obj)[0]["sha256"] = "f" * 64
    save(manifest, obj)


def _no_test_split(manifest, shard):
    obj = load(manifest)
    del obj["splits"]["test"]
    obj.pop("total")
    save(manifest, obj)


def _bad_sample_list(manifest, shard):
    with open(os.path.join(os.path.dirname(manifest), "train-samples.tsv"), "r+b") as f:
        f.write(b"X")


BREAKS = {  # name -> (break, words the message must hold besides the shard's path)
    "corrupt-shard": (lambda m, s: flip_byte(s, 700), ("sha256",)),
    "missing-shard": (lambda m, s: os.unlink(s), ("is missing",)),
    "manifest-sha256": (_manifest_sha, ("sha256", MANIFEST)),
    "empty-shard": (lambda m, s: (open(s, "wb").write(b"\0" * 10240), restamp(m, os.path.basename(s))),
                    ("holds 0 samples",)),
    "cls-missing": (restamped(drop_cls), (f"{SHARD0} member", ".cls is missing")),
    "undecodable-member": (restamped(cut_image), (f"{SHARD0} member", ".jpg does not decode")),
}
WATCH = ("{run}", "{tmp}/shards", "{tmp}/jpegs", "{tmp}/rgb.pt")


def _cases() -> list[Case]:
    cases = []
    for name, (brk, says) in BREAKS.items():
        says = (SHARD0, *says)
        cases.append(Case(f"shards-embed-{name}", EMBED, says=says, setup=broken(brk),
                          unchanged=(*WATCH, "{tmp}/out.safetensors")))
        cases.append(Case(f"shards-pretrain-{name}", PRETRAIN_ARGS, says=(*says, "data error"), setup=broken(brk),
                          unchanged=WATCH))
    cases.append(Case("shards-embed-undecodable-member-in-a-worker", [*EMBED[:-3], "--workers", "2", NP],
                      says=(SHARD0, ".jpg does not decode"), setup=broken(restamped(cut_image)),
                      unchanged=(*WATCH, "{tmp}/out.safetensors")))
    cases.append(Case("shards-linear-mocov2-corrupt-shard", LINEAR, says=(SHARD0, "sha256"),
                      setup=broken(lambda m, s: flip_byte(s, 700)), unchanged=WATCH))
    return cases


CASES = _cases() + [
    # the manifest and the sample list
    Case("shards-embed-manifest-not-json", [*EMBED[:4], "{bad_json_broken}", *EMBED[5:]],
         says=("{bad_json_broken}", "not valid JSON"), setup=intact, unchanged=(*WATCH, "{tmp}/out.safetensors")),
    Case("shards-embed-file-not-a-manifest", [*EMBED[:4], "{bad_json_list}", *EMBED[5:]],
         says=("{bad_json_list}", "is not an ssl-bf shard manifest"), setup=intact, unchanged=WATCH),
    Case("shards-embed-no-test-split", [*EMBED[:6], "test", *EMBED[7:]], says=(MANIFEST, "has no test split"),
         setup=broken(_no_test_split), unchanged=WATCH),
    Case("shards-embed-sample-list-changed", EMBED, says=("{tmp}/shards/train-samples.tsv", "sha256"),
         setup=broken(_bad_sample_list), unchanged=(*WATCH, "{tmp}/out.safetensors")),
    Case("shards-pretrain-manifest-not-found", each_key_once(*PRETRAIN_ARGS, "data.root={tmp}/nowhere/manifest.json"),
         says=("{tmp}/nowhere/manifest.json", "not found", "ssl-bf shard"), setup=intact,
         unchanged=(*WATCH, "{tmp}/new")),
    Case("shards-pretrain-no-root", each_key_once(*PRETRAIN_ARGS, "data.root=null"), says=("data.root",), setup=intact,
         unchanged=(*WATCH, "{tmp}/new")),
    Case("shards-pretrain-workers-do-not-divide-streams", each_key_once(*PRETRAIN_ARGS, "data.num_workers=3"),
         says=("data.num_workers=3 does not divide data.shard_streams=40",), setup=intact,
         unchanged=(*WATCH, "{tmp}/new")),
    # ssl-bf shard
    Case("shards-shard-src-missing", ["shard", "{tmp}/nowhere", "{tmp}/out", NP],
         says=("{tmp}/nowhere", "is not a folder"), unchanged=("{tmp}",)),
    Case("shards-shard-out-is-a-file", ["shard", "{tmp}/jpegs", "{tmp}/rgb.pt", NP],
         says=("{tmp}/rgb.pt", "is a file"), setup=intact, unchanged=("{tmp}",)),
    Case("shards-shard-out-holds-other-files", ["shard", "{tmp}/jpegs", "{tmp}/jpegs/train", NP],
         says=("{tmp}/jpegs/train", "no ledger or manifest"), setup=broken(
             lambda m, s: shutil.copyfile(s, os.path.join(os.path.dirname(m), "..", "jpegs", "train",
                                                          "train-000000.tar"))),
         unchanged=("{tmp}",)),
    Case("shards-shard-other-settings", ["shard", "{tmp}/jpegs", "{tmp}/shards", "--shard-size", "0.05", NP],
         says=(MANIFEST, "shard_size_mb: 0.02 there, 0.05 now"), setup=intact, unchanged=("{tmp}",)),
    Case("shards-shard-unreadable-manifest", ["shard", "{tmp}/jpegs", "{tmp}/shards", "--shard-size", "0.02", NP],
         says=(MANIFEST, "not valid JSON", "give another OUT"),
         setup=broken(lambda m, s: open(m, "w").write("{")), unchanged=("{tmp}",)),
    Case("shards-shard-unreadable-image", SHARD, says=("{tmp}/jpegs/train/", "is not a readable image",
                                                      "--skip-unreadable"),
         setup=broken(lambda m, s: open(os.path.join(os.path.dirname(m), "..", "jpegs", "train", "0_T-shirt-top",
                                                     "train_0003.jpg"), "wb").write(b"\xff\xd8\xff not a jpeg")),
         unchanged=("{tmp}/jpegs", "{tmp}/shards")),
    Case("shards-shard-size-zero", [*SHARD, "--shard-size", "0"], says=("--shard-size",), unchanged=("{tmp}",)),
    Case("shards-shard-size-nan", [*SHARD, "--shard-size", "nan"], says=("--shard-size",), unchanged=("{tmp}",)),
    Case("shards-shard-json-inside-out", [*SHARD, "--json", "{tmp}/out/summary.json"],
         says=("--json", "inside OUT"), setup=intact, unchanged=("{tmp}",)),
]
# ------------------------------------------------------------------------------------------------
# END issue 24 (shards) cases
# ------------------------------------------------------------------------------------------------
