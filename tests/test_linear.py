"""Linear probes: backbone sanity check, image protocol, cached lr sweep, logistic regression, CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from ssl_bf.eval.linear_cli import linear_main
from ssl_bf.eval.formats import save_embeddings
from ssl_bf.eval.linear_cached import fit_logreg, holdout_split, probe_cached, probe_logreg, train_linear_heads
from ssl_bf.eval.linear_common import LinearHead, load_head, recipe_for, save_head
from ssl_bf.eval.linear_images import BackboneChangedError, check_unchanged, probe_images, snapshot


def separable(n: int, d: int = 20, classes: int = 3, seed: int = 0, margin: float = 8.0):
    """Linearly separable blobs (centres `margin` apart, unit noise)."""
    centres = np.random.default_rng(99).normal(size=(classes, d))
    centres *= margin / np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    return (centres[y] + 0.5 * rng.normal(size=(n, d))).astype(np.float32), y


def overlapping(n: int, seed: int, d: int = 30, classes: int = 5):
    centres = np.random.default_rng(7).normal(size=(classes, d))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    return (centres[y] + 1.5 * rng.normal(size=(n, d))).astype(np.float32), y


def teacher_labelled(n: int, seed: int, d: int = 16, classes: int = 4, margin: float = 1.0):
    """Gaussian points labelled by a fixed random linear teacher (argmax of x @ W), keeping only
    points whose best teacher score beats the second by `margin`: linearly separable with a gap,
    but no clusters (so a probe trained on shuffled labels has nothing to latch on to)."""
    w = np.random.default_rng(123).normal(size=(d, classes))
    rng = np.random.default_rng(seed)
    xs, ys, kept = [], [], 0
    while kept < n:
        x = rng.normal(size=(4 * n, d))
        scores = x @ w
        top2 = np.sort(scores, axis=1)[:, -2:]
        keep = top2[:, 1] - top2[:, 0] > margin
        xs.append(x[keep])
        ys.append(scores[keep].argmax(1))
        kept += int(keep.sum())
    return np.concatenate(xs)[:n].astype(np.float32), np.concatenate(ys)[:n]


# ----------------------------------------------------------------------------------------------
# Backbone sanity check
# ----------------------------------------------------------------------------------------------


def small_backbone() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


def test_check_unchanged_detects_weights_and_buffers():
    model = small_backbone()
    before = snapshot(model)
    check_unchanged(before, model)  # untouched: fine
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] += 1e-6
    with pytest.raises(BackboneChangedError, match="0.weight"):
        check_unchanged(before, model)
    model = small_backbone()
    before = snapshot(model)
    model.train()(torch.randn(4, 1, 8, 8))  # a forward in train mode moves the BN running stats
    with pytest.raises(BackboneChangedError, match="1.running_mean"):
        check_unchanged(before, model)


def tiny_image_sets(n_train: int = 96, n_test: int = 48):
    from ssl_bf.data import TensorImageDataset

    def make(n, seed):
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 2, (n,), generator=g)
        images = (torch.rand(n, 1, 12, 12, generator=g) * 60).to(torch.uint8)
        images[y == 1, :, 3:9, 3:9] += 150  # class 1: a bright square
        return TensorImageDataset("fashion-mnist", "<memory>", ["dark", "square"], images, y)

    return make(n_train, 0), make(n_test, 1)


def brightness_backbone() -> nn.Module:
    """A fixed (not random) frozen backbone: ReLU(local mean - t) for four thresholds t, pooled.

    Its features separate the two classes of `tiny_image_sets` (a bright square or not) linearly,
    so a working probe must get (almost) every test image right.
    """
    conv = nn.Conv2d(1, 4, 3, stride=2)
    with torch.no_grad():
        conv.weight.fill_(1 / 9)
        conv.bias.copy_(torch.tensor([0.0, -0.2, -0.4, -0.6]))
    return nn.Sequential(conv, nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


@pytest.mark.parametrize("protocol,bn_head,lr", [("mocov3", True, 1.0), ("mocov2", False, None)])
def test_image_probe_keeps_backbone_and_learns(protocol, bn_head, lr):
    train_set, test_set = tiny_image_sets()
    model = brightness_backbone()
    recipe = recipe_for(protocol, epochs=3, batch_size=32, lr=lr)
    res = probe_images(model, train_set, test_set, recipe, image_size=12, protocol=protocol, bn_head=bn_head,
                       num_workers=0, progress=False)
    assert res.protocol == protocol and res.num_classes == 2 and res.hyperparameters["bn_head"] == bn_head
    if protocol == "mocov3":
        assert res.hyperparameters["used_lr"] == pytest.approx(1.0 * 32 / 256)
    # 48 test images, 26 of one class: a head that learned nothing scores at most ~54%
    assert res.top1 >= 95.0 and res.top5 == 100.0  # 2 classes: top-5 is top-2
    assert not model.training and all(not p.requires_grad for p in model.parameters())


class SelfModifying(nn.Module):
    """A backbone that (wrongly) updates a weight in every forward pass."""

    def __init__(self):
        super().__init__()
        self.net = small_backbone()

    def forward(self, x):
        with torch.no_grad():
            self.net[0].bias.add_(0.01)
        return self.net(x)


def test_image_probe_fails_if_backbone_changes():
    train_set, test_set = tiny_image_sets(32, 16)
    with pytest.raises(BackboneChangedError, match="net.0.bias"):
        probe_images(SelfModifying(), train_set, test_set, recipe_for("mocov2", epochs=1, batch_size=16),
                     image_size=12, num_workers=0, progress=False)


def test_recipes_follow_protocols():
    v2, v3 = recipe_for("mocov2"), recipe_for("mocov3")
    assert (v2.epochs, v2.batch_size, v2.peak_lr(), v2.momentum, v2.weight_decay) == (100, 256, 30.0, 0.9, 0.0)
    assert [v2.lr_at(e / 100) for e in (0, 59, 60, 79, 80, 99)] == pytest.approx([30, 30, 3, 3, 0.3, 0.3])
    assert (v3.epochs, v3.batch_size, v3.peak_lr(), v3.weight_decay) == (90, 1024, 0.4, 0.0)
    assert v3.lr_at(0.5) == pytest.approx(0.2) and v3.lr_at(1.0) == pytest.approx(0.0)
    head = LinearHead(16, 4)
    assert head.fc.weight.std().item() == pytest.approx(0.01, rel=0.3) and head.fc.bias.abs().sum() == 0


# ----------------------------------------------------------------------------------------------
# Cached features and logistic regression
# ----------------------------------------------------------------------------------------------


PROBES = {
    "cached": lambda x, y, xt, yt: probe_cached(x, y, xt, yt, recipe=recipe_for("cached", epochs=10)),
    "logreg": lambda x, y, xt, yt: probe_logreg(x, y, xt, yt),
}


@pytest.mark.parametrize("protocol", ["cached", "logreg"])
def test_probe_learns_a_separable_problem_and_not_shuffled_labels(protocol):
    """Real labels: >= 95% on the test set. The same train features with permuted labels carry no
    information about the test labels: the probe must stay near chance (the majority-class rate)."""
    x, y = teacher_labelled(1000, seed=0)
    xt, yt = teacher_labelled(500, seed=1)
    res = PROBES[protocol](x, y, xt, yt)
    assert res.protocol == protocol and res.num_classes == 4
    assert res.top1 >= 95.0
    control = PROBES[protocol](x, np.random.default_rng(0).permutation(y), xt, yt)
    majority = 100.0 * np.bincount(yt).max() / len(yt)  # 32.2%; uniform guessing: 25%
    assert control.top1 <= majority + 8.0, (control.top1, majority)


def test_logreg_separable_toy_reaches_100():
    x, y = separable(600)
    xt, yt = separable(300, seed=1)
    res = probe_logreg(x, y, xt, yt)
    assert res.top1 == 100.0 and res.protocol == "logreg"
    assert res.hyperparameters["l2"] in (1e-2, 1e-3, 1e-4, 1e-5) and len(res.sweep) == 4


def test_joint_l2_fit_equals_separate_fits():
    x, y = overlapping(400, 0, d=8)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    w, b = fit_logreg(xt, yt, 5, [1e-1, 1e-3], max_iter=500)
    for i, l2 in enumerate([1e-1, 1e-3]):
        wi, bi = fit_logreg(xt, yt, 5, l2, max_iter=500)
        torch.testing.assert_close(w[i], wi, atol=2e-3, rtol=1e-2)
        torch.testing.assert_close(b[i], bi, atol=2e-3, rtol=1e-2)


def test_logreg_matches_sklearn():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y = overlapping(2000, 0)
    xt, yt = overlapping(1000, 1)
    ours = probe_logreg(x, y, xt, yt, l2s=(1.0 / 2000,), refit=True, max_iter=500)
    scaler = StandardScaler().fit(x)
    ref = LogisticRegression(C=1.0, max_iter=2000).fit(scaler.transform(x), y)
    assert ours.top1 == pytest.approx(100.0 * ref.score(scaler.transform(xt), yt), abs=0.5)


def test_cached_separable_and_selection_ignores_test():
    x, y = overlapping(1500, 0)
    xt, yt = overlapping(500, 1)
    res = probe_cached(x, y, xt, yt, lrs=(0.001, 0.1, 1.0), recipe=recipe_for("cached", epochs=5))
    shuffled = probe_cached(x, y, xt, np.random.default_rng(0).permutation(yt), lrs=(0.001, 0.1, 1.0),
                            recipe=recipe_for("cached", epochs=5))
    assert res.sweep == shuffled.sweep and res.hyperparameters["lr"] == shuffled.hyperparameters["lr"]
    assert res.top1 > 80 and shuffled.top1 < 40
    assert "no augmentation" in res.note and res.protocol == "cached"
    xs, ys = separable(400)
    assert probe_cached(xs, ys, *separable(200, seed=1)).top1 == 100.0


def test_stacked_heads_are_independent():
    x, y = overlapping(500, 0)
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y)
    recipe = recipe_for("cached", epochs=2, batch_size=64)
    w1, b1 = train_linear_heads(xt, yt, 5, [0.1], recipe)
    w3, b3 = train_linear_heads(xt, yt, 5, [0.1, 1e6, 0.01], recipe)  # the middle head diverges
    torch.testing.assert_close(w3[0], w1[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b3[0], b1[0], rtol=1e-4, atol=1e-5)
    res = probe_cached(x, y, *overlapping(200, 1), lrs=(1e9, 0.1), recipe=recipe_for("cached", epochs=2))
    assert res.hyperparameters["lr"] == 0.1 and res.sweep[0]["val_top1"] < res.sweep[1]["val_top1"]


def test_bn_head_makes_cached_probe_scale_free():
    x, y = overlapping(1000, 0)
    xt, yt = overlapping(300, 1)
    a = probe_cached(x, y, xt, yt, bn_head=True, recipe=recipe_for("cached", epochs=3))
    b = probe_cached(1000 * x, y, 1000 * xt, yt, bn_head=True, recipe=recipe_for("cached", epochs=3))
    assert a.hyperparameters["lr"] == b.hyperparameters["lr"] and a.top1 == pytest.approx(b.top1, abs=0.5)


def test_holdout_split_is_stratified_and_disjoint():
    y = np.array([0] * 50 + [1] * 30 + [2] * 1)
    fit, held = holdout_split(y, 0.2, seed=0)
    assert set(fit) | set(held) == set(range(len(y))) and not set(fit) & set(held)
    assert np.bincount(y[held], minlength=3).tolist() == [10, 6, 0]
    with pytest.raises(ValueError):
        holdout_split(y, 1.0)


def test_saved_head_reproduces_predictions(tmp_path):
    x, y = overlapping(600, 0)
    xt, yt = overlapping(200, 1)
    values = np.array([3, 10, 11, 40, 99])
    res = probe_logreg(x, values[y], xt, values[yt])
    assert res.label_values == values.tolist()
    save_head(str(tmp_path / "head.pt"), res, classes=list("abcde"))
    head = load_head(str(tmp_path / "head.pt"))
    with torch.no_grad():
        pred = head(torch.from_numpy(xt)).argmax(1).numpy()
    assert 100.0 * np.mean(values[pred] == values[yt]) == pytest.approx(res.top1)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def test_cli_cached_and_logreg_json(tmp_path, capsys):
    x, y = overlapping(800, 0)
    xt, yt = overlapping(200, 1)
    tr, te = str(tmp_path / "tr.safetensors"), str(tmp_path / "te.safetensors")
    save_embeddings(tr, x, y, classes=list("abcde"))
    save_embeddings(te, xt, yt, classes=list("abcde"))
    for protocol in ("cached", "logreg"):
        out = tmp_path / f"{protocol}.json"
        assert linear_main(["--protocol", protocol, "--train", tr, "--test", te, "--epochs", "3",
                            "--json", str(out), "--save-head", str(tmp_path / f"{protocol}.pt"),
                            "--no-progress"]) == 0
        report = json.loads(out.read_text())
        direct = (probe_cached(x, y, xt, yt, recipe=recipe_for("cached", epochs=3)) if protocol == "cached"
                  else probe_logreg(x, y, xt, yt))  # what the CLI must reproduce from the files
        assert report["protocol"] == protocol and report["top1"] == pytest.approx(direct.top1)
        assert report["top5"] == pytest.approx(direct.top5) and report["top1"] > 60  # chance: 20%
        assert report["sweep"] and "hyperparameters" in report
        assert (tmp_path / f"{protocol}.pt").is_file()
    assert "held-out top-1 %" in capsys.readouterr().out


def test_cli_bad_requests(tmp_path, capsys):
    assert linear_main(["--protocol", "mocov2", "--no-progress"]) == 2
    assert "needs --checkpoint" in capsys.readouterr().err
    assert linear_main(["--protocol", "cached", "--no-progress"]) == 2
    assert "needs --train and --test" in capsys.readouterr().err
    tr, te = str(tmp_path / "tr.safetensors"), str(tmp_path / "te.safetensors")
    save_embeddings(tr, np.ones((4, 3)), [0, 1, 0, 1])
    save_embeddings(te, np.ones((4, 5)), [0, 1, 0, 1])
    assert linear_main(["--protocol", "logreg", "--train", tr, "--test", te, "--no-progress"]) == 2
    assert "dimensions differ" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Bad input: refused at parse time or before any compute, never a number from a bad setting
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, good, bad", [
    ("positive_float", ["0.1", "1e-5", "30"], ["0", "-1", "nan", "inf", "-inf", "x"]),
    ("nonneg_float", ["0", "1e-4"], ["-0.1", "nan", "inf"]),
    ("positive_int", ["1", "256"], ["0", "-3", "2.5", "nan", "ten"]),
    ("nonneg_int", ["0", "4"], ["-1", "1.0"]),
    ("open_fraction", ["0.1", "0.5"], ["0", "1", "1.5", "nan"]),
    ("seed", ["0", "123"], ["-1", str(2 ** 32)]),
    ("device_name", ["auto", "cpu", "cuda", "cuda:1"], ["tpu", "cuda:", "cuda:-1", "CPU", "gpu"]),
])
def test_option_types(kind, good, bad):
    import argparse

    from ssl_bf import cli_args as options

    check = getattr(options, kind)
    for text in good:
        check(text)
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            check(text)


@pytest.mark.parametrize("extra", [["--lrs", "0"], ["--lrs", "0.1", "nan"], ["--l2", "0"], ["--max-iter", "0"],
                                   ["--epochs", "0"], ["--weight-decay", "nan"], ["--val-fraction", "1"],
                                   ["--batch-size", "0"], ["--seed", "-1"], ["--device", "tpu"]])
def test_cli_bad_hyperparameters_refused(tmp_path, capsys, extra):
    tr, te = str(tmp_path / "tr.safetensors"), str(tmp_path / "te.safetensors")
    save_embeddings(tr, *overlapping(50, 0))
    save_embeddings(te, *overlapping(20, 1))
    assert linear_main(["--protocol", "cached", "--train", tr, "--test", te, *extra, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"argument {extra[0]}" in err, err


def test_cli_outputs_checked_before_any_compute(tmp_path, capsys, monkeypatch):
    import ssl_bf.eval.linear_cached as cached

    tr, te = str(tmp_path / "tr.safetensors"), str(tmp_path / "te.safetensors")
    save_embeddings(tr, *overlapping(50, 0))
    save_embeddings(te, *overlapping(20, 1))
    before = open(tr, "rb").read()
    monkeypatch.setattr(cached, "probe_cached", lambda *a, **k: pytest.fail("trained before checking outputs"))
    ckpt = tmp_path / "checkpoints" / "last.pt"
    ckpt.parent.mkdir()
    torch.save({"model": {}}, ckpt)
    for option, target in (("--save-head", tr), ("--save-head", str(ckpt)), ("--json", str(tmp_path)),
                           ("--json", te)):
        assert linear_main(["--protocol", "cached", "--train", tr, "--test", te, option, target,
                            "--no-progress"]) == 2
        assert option in capsys.readouterr().err
    assert open(tr, "rb").read() == before
    assert linear_main(["--protocol", "cached", "--train", tr, "--test", tr, "--no-progress"]) == 2
    assert "is the --train file" in capsys.readouterr().err


def test_cli_repeated_lrs_swept_once(tmp_path, capsys):
    tr, te = str(tmp_path / "tr.safetensors"), str(tmp_path / "te.safetensors")
    save_embeddings(tr, *overlapping(200, 0))
    save_embeddings(te, *overlapping(50, 1))
    out = tmp_path / "lin.json"
    assert linear_main(["--protocol", "cached", "--train", tr, "--test", te, "--epochs", "1", "--lrs", "0.1",
                        "1", "0.1", "--json", str(out), "--no-progress"]) == 0
    assert [s["lr"] for s in json.loads(out.read_text())["sweep"]] == [0.1, 1.0]
    assert "--lrs lists 0.1 more than once" in capsys.readouterr().err
