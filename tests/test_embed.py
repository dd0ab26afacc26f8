"""Embeddings files (format, readers, validation) and checkpoint -> embeddings -> evaluate."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from ssl_bf.eval.formats import (EmbeddingsError, find_labels_file, load_embeddings, make_embeddings,
                                 save_embeddings)
from ssl_bf.outputs import OutputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------------------
# Format
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip(tmp_path, dtype):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 6)).astype(np.float32)
    y = rng.integers(0, 3, 20)
    path = str(tmp_path / "sub" / "e.safetensors")
    save_embeddings(path, x, y, checkpoint="/runs/a/last.pt", features="backbone", dataset="cifar10",
                    split="test", classes=["cat", "dog", "émeu"], normalized=True,
                    image_paths=[f"/data/img {i}.png" for i in range(20)], dtype=dtype,
                    extra={"image_size": 32})
    e = load_embeddings(path)
    assert e.embeddings.dtype == np.dtype(dtype) and e.labels.dtype == np.int64
    tol = 1e-3 if dtype == "float16" else 0.0
    np.testing.assert_allclose(e.embeddings.astype(np.float32), x, rtol=tol, atol=tol)
    assert e.labels.tolist() == y.tolist()
    assert e.classes == ["cat", "dog", "émeu"] and e.num_classes == 3 and e.normalized
    assert e.image_paths == [f"/data/img {i}.png" for i in range(20)]
    m = e.metadata
    assert (m["checkpoint"], m["features"], m["dataset"], m["split"], m["image_size"]) == \
        ("/runs/a/last.pt", "backbone", "cifar10", "test", "32")
    umask = os.umask(0o022)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # the usual mode, not safetensors' 0600
    assert [f for f in os.listdir(tmp_path / "sub") if f.startswith(".tmp")] == []


def test_write_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "e.safetensors")
    save_embeddings(path, np.ones((3, 2)), [0, 1, 2])
    before = open(path, "rb").read()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OutputError, match="disk full"):  # one line naming the file
        save_embeddings(path, np.full((5, 2), 2.0), [0] * 5)
    monkeypatch.undo()
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["e.safetensors"]


def test_reads_files_written_by_other_programs(tmp_path):
    from safetensors.numpy import save_file
    from safetensors.torch import save_file as save_torch

    save_file({"embeddings": np.ones((4, 3), np.float16), "labels": np.arange(4, dtype=np.int32),
               "extra": np.zeros(2)}, str(tmp_path / "a.safetensors"))
    e = load_embeddings(str(tmp_path / "a.safetensors"))
    assert e.embeddings.shape == (4, 3) and e.labels.dtype == np.int64 and e.classes is None
    save_torch({"embeddings": torch.ones(4, 3, dtype=torch.bfloat16), "labels": torch.arange(4)},
               str(tmp_path / "b.safetensors"))
    assert load_embeddings(str(tmp_path / "b.safetensors")).embeddings.dtype == np.float32
    np.savez(tmp_path / "c.npz", features=np.ones((4, 3), np.float32), targets=np.arange(4))
    assert len(load_embeddings(str(tmp_path / "c.npz"))) == 4


def test_labels_file_discovery(tmp_path):
    for stem, labels in [("trainfeat", "trainlabels"), ("x_features", "x_labels"), ("val", "val_labels"),
                         ("emb", "emb.labels")]:
        np.save(tmp_path / f"{stem}.npy", np.ones((2, 2), np.float32))
        np.save(tmp_path / f"{labels}.npy", np.zeros(2, np.int64))
        assert find_labels_file(str(tmp_path / f"{stem}.npy")) == str(tmp_path / f"{labels}.npy")
    np.save(tmp_path / "lonely.npy", np.ones((2, 2), np.float32))
    with pytest.raises(EmbeddingsError, match="lonely.npy: no labels file found"):
        load_embeddings(str(tmp_path / "lonely.npy"))
    e = load_embeddings(str(tmp_path / "lonely.npy"), labels_path=str(tmp_path / "val_labels.npy"))
    assert len(e) == 2


class NotATensor:
    pass


def test_pth_loading_is_weights_only(tmp_path):
    torch.save({"payload": NotATensor()}, tmp_path / "evilfeat.pth")
    torch.save(torch.zeros(1), tmp_path / "evillabels.pth")
    with pytest.raises(EmbeddingsError, match="evilfeat.pth holds a Python object of type test_embed.NotATensor") as err:
        load_embeddings(str(tmp_path / "evilfeat.pth"))
    assert "weights_only" not in str(err.value)  # never advice to load it unrestricted


@pytest.mark.parametrize("make, fragment", [
    (lambda p: np.save(p, np.ones((3, 2, 2), np.float32)), "must be 2-D"),
    (lambda p: np.save(p, np.ones((3, 2), np.int64)), "must be floating point"),
    (lambda p: np.save(p, np.array([[1.0, np.inf], [0, 0], [1, 1]], np.float32)),
     "1 of 3 rows contain NaN or Inf (rows 0)"),
    (lambda p: open(p, "wb").close(), "the file is empty"),
    (lambda p: open(p, "wb").write(b"not numpy"), "cannot read it"),
])
def test_bad_feature_files(tmp_path, make, fragment):
    path = str(tmp_path / "f.npy")
    make(path)
    np.save(tmp_path / "f_labels.npy", np.zeros(3, np.int64))
    with pytest.raises(EmbeddingsError) as info:
        load_embeddings(path)
    assert path in str(info.value) and fragment in str(info.value)


def test_bad_labels_and_safetensors(tmp_path):
    from safetensors.numpy import save_file

    np.save(tmp_path / "a.npy", np.ones((3, 2), np.float32))
    np.save(tmp_path / "a_labels.npy", np.array([0.0, 1.5, 2.0]))
    with pytest.raises(EmbeddingsError, match="a_labels.npy: labels must be integers"):
        load_embeddings(str(tmp_path / "a.npy"))
    save_file({"features": np.ones((3, 2), np.float32)}, str(tmp_path / "b.safetensors"))
    with pytest.raises(EmbeddingsError, match=r"b.safetensors: missing tensor\(s\) \['embeddings', 'labels'\]"):
        load_embeddings(str(tmp_path / "b.safetensors"))
    (tmp_path / "c.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")
    with pytest.raises(EmbeddingsError, match="c.safetensors: not a readable safetensors file"):
        load_embeddings(str(tmp_path / "c.safetensors"))
    with pytest.raises(EmbeddingsError, match="labels span \\[0, 3\\] but the metadata lists 2 classes"):
        make_embeddings(np.ones((2, 2)), [0, 3], classes=["a", "b"], path="x")
    with pytest.raises(EmbeddingsError, match="unknown embeddings format '.csv'"):
        (tmp_path / "d.csv").write_text("1,2")
        load_embeddings(str(tmp_path / "d.csv"))


# ----------------------------------------------------------------------------------------------
# Checkpoint -> embeddings -> evaluate
# ----------------------------------------------------------------------------------------------


def _fashion_mnist_or_skip():
    from ssl_bf.data import DataError, build_dataset

    try:
        return build_dataset("fashion-mnist", split="test", subset=64)
    except DataError as err:
        pytest.skip(f"Fashion-MNIST unavailable: {err}")


def make_run(tmp_path, *overrides: str) -> str:
    """A run folder with config.yaml and a freshly initialised checkpoint (tiny preset)."""
    from ssl_bf.atomic_write import write_torch
    from ssl_bf.config import save_config, to_dict
    from ssl_bf.run_layout import Owner
    from ssl_bf.run_config import load_config
    from ssl_bf.models.registry import build_model

    run = str(tmp_path / "run")
    cfg = load_config(os.path.join(ROOT, "configs", "tiny.yaml"), [f"run.dir={run}", *overrides])
    model = build_model(cfg, in_channels=1)
    save_config(cfg, os.path.join(run, "config.yaml"))
    write_torch({"model": model.state_dict(), "config": to_dict(cfg), "in_channels": 1, "epoch": 3, "step": 24},
                os.path.join(run, "checkpoints", "last.pt"), owner=Owner.PRETRAIN)
    return run


def test_embed_checkpoint_eval_mode_batch_independent(tmp_path):
    """Eval mode, no BatchFormer: a row's features do not depend on the rest of its batch."""
    from ssl_bf.eval.embed import embed

    _fashion_mnist_or_skip()
    run = make_run(tmp_path, "batchformer.enabled=true")
    ckpt = os.path.join(run, "checkpoints", "last.pt")
    out = str(tmp_path / "e.safetensors")
    a = embed(ckpt, "fashion-mnist", "test", out, batch_size=64, device="cpu", subset=64, progress=False)
    b = embed(ckpt, None, "test", None, batch_size=5, device="cpu", subset=64, progress=False)
    np.testing.assert_allclose(a.embeddings, b.embeddings, rtol=1e-4, atol=1e-5)
    e = load_embeddings(out)
    assert e.embeddings.shape == (64, 64) and e.embeddings.dtype == np.float32
    from ssl_bf.data import build_dataset
    assert e.labels.tolist() == build_dataset("fashion-mnist", split="test", subset=64).labels.tolist()
    assert e.metadata["features"] == "backbone" and e.metadata["split"] == "test"
    assert e.metadata["checkpoint"] == os.path.abspath(ckpt) and e.num_classes == 10
    proj = embed(ckpt, "fashion-mnist", "test", None, features="projection", device="cpu", subset=8, progress=False)
    assert proj.dim == 32  # moco.dim of the tiny preset


def test_embed_image_folder_with_paths(tmp_path):
    from PIL import Image

    from ssl_bf.eval.embed_cli import embed_main

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("ant", "bee"):
            os.makedirs(tmp_path / "imgs" / split / cls)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(
                    tmp_path / "imgs" / split / cls / f"{i}.png")
    run = make_run(tmp_path)
    # The tiny preset is 1-channel (Fashion-MNIST); a 3-channel folder is refused with a clear error.
    out = str(tmp_path / "f.safetensors")
    argv = ["--checkpoint", os.path.join(run, "checkpoints", "last.pt"), "--data", str(tmp_path / "imgs"),
            "--split", "test", "--out", out, "--no-progress", "--workers", "0", "--image-size", "32"]
    assert embed_main(argv) == 2
    from ssl_bf.atomic_write import write_torch
    from ssl_bf.config import to_dict
    from ssl_bf.run_config import load_config
    from ssl_bf.models.registry import build_model

    cfg = load_config(os.path.join(run, "config.yaml"))
    ckpt3 = str(tmp_path / "rgb.pt")
    write_torch({"model": build_model(cfg, 3).state_dict(), "config": to_dict(cfg), "in_channels": 3}, ckpt3)
    argv[1] = ckpt3
    assert embed_main([*argv, "--dtype", "float16", "--json", str(tmp_path / "s.json")]) == 0
    e = load_embeddings(out)
    assert len(e) == 6 and e.embeddings.dtype == np.float16 and e.classes == ["ant", "bee"]
    assert [os.path.relpath(p, tmp_path / "imgs") for p in e.image_paths] == \
        [f"val/{c}/{i}.png" for c in ("ant", "bee") for i in range(3)]
    assert json.loads((tmp_path / "s.json").read_text())["rows"] == 6


def test_evaluate_run(tmp_path, capsys):
    from ssl_bf.eval.evaluate_cli import evaluate_main

    _fashion_mnist_or_skip()
    run = make_run(tmp_path)
    with open(os.path.join(run, "results.json"), "w") as f:
        json.dump({"pretrain": {"loss": 5.0}}, f)
    assert evaluate_main([run, "--subset", "300", "--no-progress", "--device", "cpu",
                          "--json", str(tmp_path / "ev.json")]) == 0
    printed = capsys.readouterr().out
    assert "k-NN" in printed and "cached" in printed
    results = json.loads(open(os.path.join(run, "results.json")).read())
    assert results["pretrain"] == {"loss": 5.0}  # other keys are kept
    assert [(r["k"], r["temperature"]) for r in results["knn"]] == [(20, 0.07), (20, 0.1), (200, 0.07), (200, 0.1)]
    assert results["linear"]["protocol"] == "cached" and 0 <= results["linear"]["top1"] <= 100
    # The recorded logreg figure is what the probe gives on the saved embeddings.
    from ssl_bf.eval.linear_cached import probe_logreg
    tr, te = (load_embeddings(os.path.join(run, "embeddings", f"{s}.safetensors")) for s in ("train", "test"))
    direct = probe_logreg(tr.embeddings, tr.labels, te.embeddings, te.labels, num_classes=tr.num_classes)
    assert results["logreg"]["protocol"] == "logreg" and results["logreg"]["top1"] == pytest.approx(direct.top1)
    assert results["evaluated"]["epoch"] == 3 and results["evaluated"]["train_rows"] == 300
    for split in ("train", "test"):
        assert len(load_embeddings(os.path.join(run, "embeddings", f"{split}.safetensors"))) == 300
    assert os.path.isfile(os.path.join(run, "linear_head.pt")) and os.path.isfile(os.path.join(run, "logreg_head.pt"))
    assert evaluate_main([run, "--linear", "cached,svm", "--no-progress"]) == 2
    assert "unknown linear probe(s) ['svm']" in capsys.readouterr().err
    # A second evaluation appends to the history and may reuse the embeddings.
    assert evaluate_main([run, "--subset", "300", "--no-progress", "--device", "cpu", "--reuse-embeddings",
                          "--linear", "none"]) == 0
    results = json.loads(open(os.path.join(run, "results.json")).read())
    assert "linear" not in results and "logreg" not in results  # no stale probe beside the new k-NN
    with open(os.path.join(run, "evaluations.jsonl")) as f:
        assert len(f.readlines()) == 2


def test_evaluate_missing_checkpoint(tmp_path, capsys):
    from ssl_bf.eval.evaluate_cli import evaluate_main

    os.makedirs(tmp_path / "empty_run")
    assert evaluate_main([str(tmp_path / "empty_run"), "--no-progress"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Bad input: checkpoints, outputs, and all-or-nothing evaluate
# ----------------------------------------------------------------------------------------------


def _digest(folder) -> dict:
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


@pytest.mark.parametrize("make, fragment", [
    (lambda p: open(p, "wb").close(), "is empty"),
    (lambda p: open(p, "w").write("not a checkpoint\n"), "is not a torch checkpoint"),
    (lambda p: torch.save([1, 2], p), "holds a list"),
    (lambda p: torch.save({"model": torch.zeros(2), "config": {}}, p), "its 'model' is a Tensor"),
    (lambda p: torch.save({"weight": torch.zeros(2)}, p), r"c\.json \(written beside it\) is missing"),
    (lambda p: torch.save({"embeddings": torch.zeros(2, 2), "labels": torch.zeros(2)}, p), "holds embeddings"),
])
def test_read_checkpoint_refuses_what_is_not_one(tmp_path, make, fragment):
    from ssl_bf.eval.checkpoints import CheckpointError, read_checkpoint

    path = str(tmp_path / "c.pt")
    make(path)
    with pytest.raises(CheckpointError, match=fragment) as err:
        read_checkpoint(path)
    assert str(err.value).startswith(f"--checkpoint {path}") and "\n" not in str(err.value)
    assert "weights_only=False" not in str(err.value)


def test_embed_refuses_outputs_before_loading_anything(tmp_path, capsys, monkeypatch):
    import ssl_bf.eval.embed as embed_mod
    from ssl_bf.eval.embed_cli import embed_main

    run = make_run(tmp_path)
    ckpt = os.path.join(run, "checkpoints", "last.pt")
    before = _digest(run)
    monkeypatch.setattr(embed_mod, "embed", lambda *a, **k: pytest.fail("embedded before checking outputs"))
    base = ["--checkpoint", ckpt, "--split", "test", "--no-progress"]
    for extra, option in ((["--out", ckpt], "--out"), (["--out", str(tmp_path)], "--out"),
                          (["--out", str(tmp_path / "e.npy")], "--out"),
                          (["--out", str(tmp_path / "e.safetensors"), "--json", ckpt], "--json"),
                          (["--out", str(tmp_path / "e.safetensors"), "--json", str(tmp_path)], "--json")):
        assert embed_main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and option in err, err
    assert _digest(run) == before


def test_failed_evaluate_leaves_the_run_byte_identical(tmp_path, capsys, monkeypatch):
    """A failure at any point, even while the new files are being put in place, keeps RUN as it was."""
    import ssl_bf.eval.linear_cached as cached
    import ssl_bf.eval.linear_common as common
    from ssl_bf.eval.evaluate_cli import evaluate_main

    _fashion_mnist_or_skip()
    run = make_run(tmp_path)
    argv = [run, "--subset", "200", "--linear", "cached", "--no-progress", "--device", "cpu"]
    assert evaluate_main(argv) == 0
    before = _digest(run)

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    for module, name in ((cached, "probe_cached"), (common, "save_head")):
        with monkeypatch.context() as m:
            m.setattr(module, name, boom)
            assert evaluate_main(argv) == 2
        assert "No space left" in capsys.readouterr().err
        assert _digest(run) == before, name  # no new embeddings, heads or results, no temporary files
    assert evaluate_main([*argv[:2], "199", *argv[3:]]) == 2  # k=200 cannot be scored on 199 rows
    assert "--subset 199 is smaller than k=200" in capsys.readouterr().err
    assert _digest(run) == before
    with open(os.path.join(run, "results.json"), "w") as f:
        f.write('{"knn": [1, 2')
    before = _digest(run)
    assert evaluate_main(argv) == 2
    assert "results.json is not valid JSON" in capsys.readouterr().err
    assert _digest(run) == before
