"""The output guard (ssl_bf/outputs.py) and the one module that writes (ssl_bf/atomic_write.py).

- No module of a user command writes a file except through `ssl_bf.atomic_write` (a scan of every
  call in ssl_bf/, eval/, launch/, report/), and the scan bites (an injected writer is found).
- Every writer of `ssl_bf.atomic_write` passes the guard first (a guard that refuses everything
  stops every writer, and nothing is created).
- Kinds are recognised from the files the real libraries write; the guard's refusals, the symlink
  rule, name lengths and all-or-nothing batches, each on a real file system.
"""
from __future__ import annotations

import ast
import inspect
import json
import os
import pickle
import re
import socket
import stat

import numpy as np
import pytest
import torch

from ssl_bf import atomic_write
from ssl_bf.file_kinds import FileKind, file_kind
from ssl_bf.outputs import OutputError, check_output, check_output_folder
from ssl_bf.run_layout import Owner, is_run_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCANNED = ("ssl_bf", "eval", "launch", "report")  # the user commands (benchmarks/ and scripts/ are not)
WRITER_MODULES = {os.path.join("ssl_bf", "atomic_write.py"), os.path.join("ssl_bf", "outputs.py")}
# Not outputs: the OS lock file a run or a probe holds (its content is the holder's note).
ALLOWED = {os.path.join("ssl_bf", "train", "run_lock.py"): {"os.open", "os.ftruncate", "os.pwrite"}}

# called on any object (x.savefig, Path.write_text), or as an imported name (save_file, SummaryWriter)
ANY_OBJECT = {"savefig", "save_file", "savez", "savez_compressed", "tofile", "write_text", "write_bytes",
              "mkstemp", "NamedTemporaryFile", "mkfifo", "mknod", "SummaryWriter"}
IMPORTED = ANY_OBJECT - {"savefig", "tofile", "write_text", "write_bytes"}  # write_text: ssl_bf.atomic_write's
ON_MODULE = {"torch": {"save"}, "np": {"save"}, "numpy": {"save"}, "pickle": {"dump"}, "json": {"dump"},
             "os": {"open", "replace", "rename", "truncate", "ftruncate", "pwrite", "write", "link", "symlink"},
             "shutil": {"copy", "copy2", "copyfile", "copytree", "move"}, "tempfile": {"mkstemp"}}
STD_STREAMS = {"sys.stdout", "sys.stderr"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _writes_a_file(call: ast.Call) -> str:
    """The low-level writer `call` is ('' when it is none): open() in a writing mode, torch.save,
    savefig, a safetensors/numpy/pickle dump, os-level writes and renames, copies, temp files."""
    func = call.func
    if isinstance(func, ast.Name):
        if func.id == "open":
            mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
            if mode is None:
                return ""
            if not (isinstance(mode, ast.Constant) and isinstance(mode.value, str)):
                return "open(mode=?)"
            return f"open(mode={mode.value!r})" if set(mode.value) & set("wax+") else ""
        return func.id if func.id in IMPORTED else ""
    if isinstance(func, ast.Attribute):
        owner = _dotted(func.value)
        if func.attr in ON_MODULE.get(owner, ()):
            if func.attr == "dump" and len(call.args) > 1 and _dotted(call.args[1]) in STD_STREAMS:
                return ""
            return f"{owner}.{func.attr}"
        if func.attr in ANY_OBJECT:
            return f"{owner or '?'}.{func.attr}"
    return ""


def bypassing_writers(source: str, name: str = "<source>") -> list[tuple[int, str]]:
    """(line, writer) of every low-level write in `source`."""
    return [(node.lineno, w) for node in ast.walk(ast.parse(source, name))
            if isinstance(node, ast.Call) and (w := _writes_a_file(node))]


def _sources() -> list[str]:
    found = []
    for top in SCANNED:
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            found += [os.path.relpath(os.path.join(dirpath, f), ROOT) for f in files if f.endswith(".py")]
    return sorted(found)


def test_no_command_writes_a_file_except_through_the_guarded_writers():
    offenders = []
    for rel in _sources():
        if rel in WRITER_MODULES:
            continue
        with open(os.path.join(ROOT, rel)) as f:
            found = bypassing_writers(f.read(), rel)
        offenders += [f"{rel}:{line}: {w}" for line, w in found if w not in ALLOWED.get(rel, set())]
    assert not offenders, "write through ssl_bf.atomic_write (the output guard), not directly:\n" + "\n".join(offenders)
    assert len(_sources()) > 60  # the scan saw the code base


@pytest.mark.parametrize("snippet, writer", [
    ("torch.save(state, path)", "torch.save"),
    ("with open(path, 'w') as f: f.write('x')", "open(mode='w')"),
    ("open(path, mode='ab').close()", "open(mode='ab')"),
    ("open(path, flags)", "open(mode=?)"),
    ("fig.savefig(path)", "fig.savefig"),
    ("save_file(tensors, path)", "save_file"),
    ("np.save(path, x)", "np.save"),
    ("json.dump(obj, f)", "json.dump"),
    ("pickle.dump(obj, f)", "pickle.dump"),
    ("os.replace(tmp, path)", "os.replace"),
    ("shutil.copy(a, b)", "shutil.copy"),
    ("pathlib.Path(p).write_text('x')", "?.write_text"),
    ("SummaryWriter(folder)", "SummaryWriter"),
])
def test_the_scan_finds_an_injected_writer(snippet, writer):
    source = f"def f(state, path, tensors, x, obj, f, tmp, a, b, p, folder, fig, flags):\n    {snippet}\n"
    assert [w for _, w in bypassing_writers(source)] == [writer]


def test_reading_and_printing_are_not_writes():
    source = ("with open(p) as f: pass\nopen(p, 'rb')\njson.dump(obj, sys.stdout)\ntorch.load(p, weights_only=True)\n"
              "saved.save(head)\nnp.load(p, allow_pickle=False)\n")
    assert bypassing_writers(source) == []


WRITERS = {  # each public writer of ssl_bf.atomic_write, called once on `path`
    "write_with": lambda p: atomic_write.write_with(p, FileKind.TEXT, lambda f: f.write(b"x")),
    "write_json": lambda p: atomic_write.write_json({"a": 1}, p),
    "write_text": lambda p: atomic_write.write_text("a: 1\n", p),
    "write_torch": lambda p: atomic_write.write_torch({"a": torch.zeros(2)}, p),
    "write_pickle": lambda p: atomic_write.write_pickle({"a": np.zeros(2)}, p),
    "write_npy": lambda p: atomic_write.write_npy(np.arange(3), p),
    "write_safetensors": lambda p: atomic_write.write_safetensors({"a": torch.zeros(2)}, {"k": "v"}, p),
    "write_figure": lambda p: atomic_write.write_figure(_figure(), p),
    "append_line": lambda p: atomic_write.append_line('{"a": 1}', p),
    "event_writer": lambda p: atomic_write.event_writer(p),
}


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1])
    return fig


def test_every_writer_is_listed_here():
    public = {n for n, f in inspect.getmembers(atomic_write, inspect.isfunction)
              if f.__module__ == atomic_write.__name__ and (n.startswith(("write_", "append_")) or n == "event_writer")}
    assert public == set(WRITERS)


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_every_writer_passes_the_guard_first(name, tmp_path, monkeypatch):
    calls = []

    def refuse_all(path, *args, **kwargs):
        calls.append(path)
        raise OutputError(f"refused {path}")

    monkeypatch.setattr(atomic_write, "check_output", refuse_all)
    monkeypatch.setattr(atomic_write, "check_output_folder", refuse_all)
    target = str(tmp_path / "out" / "file")
    with pytest.raises(OutputError, match="refused"):
        WRITERS[name](target)
    assert calls == [target] and os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", sorted(set(WRITERS) - {"event_writer"}))
def test_every_writer_refuses_a_fifo_and_leaves_it_a_fifo(name, tmp_path):
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="FIFO"):
        WRITERS[name](fifo)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and sorted(os.listdir(tmp_path)) == ["fifo"]


# --- kinds ---------------------------------------------------------------------------------------


def _write_kinds(folder) -> dict[str, FileKind]:
    """One file of each kind, written by the library that makes it."""
    from PIL import Image
    from safetensors.torch import save_file

    paths = {}

    def at(name, kind):
        paths[os.path.join(folder, name)] = kind
        return os.path.join(folder, name)

    torch.save({"w": torch.zeros(3)}, at("zip.pt", FileKind.TORCH))
    torch.save({"w": torch.zeros(3)}, at("legacy.pt", FileKind.TORCH), _use_new_zipfile_serialization=False)
    save_file({"x": torch.zeros(2, 3)}, at("e.safetensors", FileKind.SAFETENSORS), metadata={"a": "b"})
    with open(at("r.json", FileKind.JSON), "w") as f:
        json.dump({"a": [1, 2]}, f)
    with open(at("m.jsonl", FileKind.JSON), "w") as f:
        f.write('{"step": 1}\n{"step": 2}\n')
    with open(at("c.yaml", FileKind.TEXT), "w") as f:
        f.write("method: mocov2\nseed: 0\n# é\n")
    with open(at("t.csv", FileKind.TEXT), "w") as f:
        f.write("a,b\n1,2\n")
    Image.new("RGB", (4, 4)).save(at("i.png", FileKind.PNG))
    np.save(at("a.npy", FileKind.NPY), np.zeros(3))
    np.savez(at("a.npz", FileKind.NPZ), x=np.zeros(3), y=np.ones(2))
    with open(at("p.pkl", FileKind.PICKLE), "wb") as f:
        pickle.dump({"a": np.zeros(2)}, f, protocol=4)
    with open(at("r.bin", FileKind.OTHER), "wb") as f:
        f.write(bytes(range(256)) * 4)
    Image.new("RGB", (4, 4)).save(at("i.jpg", FileKind.OTHER))
    return paths


def test_each_kind_is_recognised_from_what_its_library_writes(tmp_path):
    for path, kind in _write_kinds(str(tmp_path)).items():
        assert file_kind(path) is kind, path
    (tmp_path / "empty").write_bytes(b"")
    assert file_kind(str(tmp_path / "empty")) is None


def test_a_file_is_replaced_only_by_its_own_kind(tmp_path):
    kinds = _write_kinds(str(tmp_path))
    for path, kind in kinds.items():
        before = open(path, "rb").read()
        for written in FileKind:
            if written is FileKind.OTHER:
                continue
            if written is kind:
                assert check_output(path, written) == os.path.realpath(path)
            else:
                with pytest.raises(OutputError, match=re.escape(f"holds {kind.value}")):
                    check_output(path, written, option="--out")
        assert open(path, "rb").read() == before


# --- special files, links, names -----------------------------------------------------------------


def test_special_files_are_refused_and_stay_what_they_were(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    (tmp_path / "folder").mkdir()
    specials = {"fifo": "FIFO", "sock": "socket", "folder": "folder"}
    if os.geteuid() == 0:  # a character device of our own (as /dev/null is)
        os.mknod(tmp_path / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        specials["null"] = "character device"
    for name, what in specials.items():
        mode = os.lstat(tmp_path / name).st_mode
        with pytest.raises(OutputError, match=f"--json {tmp_path / name} is a {what}"):
            check_output(str(tmp_path / name), FileKind.JSON, option="--json")
        with pytest.raises(OutputError, match=what):
            atomic_write.write_json({"a": 1}, str(tmp_path / name))
        assert os.lstat(tmp_path / name).st_mode == mode
    with pytest.raises(OutputError, match="character device"):
        check_output("/dev/null", FileKind.JSON, option="--json")
    sock.close()


def test_a_link_to_a_file_is_written_through_and_stays_a_link(tmp_path):
    (tmp_path / "real.json").write_text('{"old": 1}')
    os.symlink("real.json", tmp_path / "link.json")
    atomic_write.write_json({"new": 2}, str(tmp_path / "link.json"))
    assert os.path.islink(tmp_path / "link.json")
    assert json.loads((tmp_path / "real.json").read_text()) == {"new": 2}


def test_a_link_to_a_special_file_or_nowhere_is_refused(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    os.symlink("fifo", tmp_path / "to-fifo")
    os.symlink("/dev/null", tmp_path / "to-null")
    os.symlink("missing", tmp_path / "dangling")
    for name, says in (("to-fifo", "FIFO"), ("to-null", "character device"), ("dangling", "dangling")):
        with pytest.raises(OutputError, match=says):
            atomic_write.write_json({"a": 1}, str(tmp_path / name))
        assert os.path.islink(tmp_path / name)
    assert not (tmp_path / "missing").exists()


def test_any_name_the_file_system_takes_works_and_a_longer_one_is_refused_up_front(tmp_path):
    longest = "n" * 250 + ".json"  # 255 bytes: the temp file must not add to it
    atomic_write.write_json({"a": 1}, str(tmp_path / longest))
    assert json.loads((tmp_path / longest).read_text()) == {"a": 1}
    for name in ("n" * 251 + ".json", "é" * 128 + ".json"):
        with pytest.raises(OutputError, match=r"--json .* has a name of \d+ bytes"):
            check_output(str(tmp_path / name), FileKind.JSON, option="--json")
    with pytest.raises(OutputError, match="has a name of"):
        check_output(str(tmp_path / ("d" * 300) / "x.json"), FileKind.JSON, option="--json")
    for name in ("out/", "out/.", "."):
        with pytest.raises(OutputError, match="not a file name"):
            check_output(os.path.join(str(tmp_path), name), FileKind.JSON, option="--json")
    assert sorted(os.listdir(tmp_path)) == [longest]  # no temp file left, nothing else created


def test_missing_folders_are_created_at_write_time_only(tmp_path):
    target = str(tmp_path / "a" / "b c" / "ü\nx.json")
    check_output(target, FileKind.JSON)
    assert os.listdir(tmp_path) == []
    atomic_write.write_json({"a": 1}, target)
    assert json.loads(open(target).read()) == {"a": 1}


def test_the_new_file_has_the_usual_mode_and_no_temp_file_is_left(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write.write_torch({"a": torch.ones(1)}, str(tmp_path / "x.pt"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "x.pt").st_mode) == 0o644 and os.listdir(tmp_path) == ["x.pt"]


# --- run folders ---------------------------------------------------------------------------------


def _run_folder(path) -> str:
    os.makedirs(path / "checkpoints")
    torch.save({"step": 1}, path / "checkpoints" / "last.pt")
    (path / "config.yaml").write_text("seed: 0\n")
    (path / "metrics.jsonl").write_text('{"step": 1}\n')
    return str(path)


RUN_FILES = [("config.yaml", FileKind.TEXT, Owner.PRETRAIN), ("metrics.jsonl", FileKind.JSON, Owner.PRETRAIN),
             ("checkpoints/last.pt", FileKind.TORCH, Owner.PRETRAIN), ("checkpoints/other.pt", FileKind.TORCH, Owner.PRETRAIN),
             ("tensorboard/events", FileKind.OTHER, Owner.PRETRAIN), ("results.json", FileKind.JSON, Owner.EVALUATE),
             ("evaluations.jsonl", FileKind.JSON, Owner.EVALUATE), ("linear_head.pt", FileKind.TORCH, Owner.EVALUATE),
             ("embeddings/test.safetensors", FileKind.SAFETENSORS, Owner.EVALUATE),
             ("embeddings/test.safetensors", FileKind.SAFETENSORS, Owner.EMBED),
             ("report/report.md", FileKind.TEXT, Owner.REPORT)]


@pytest.mark.parametrize("entry, kind, owner", RUN_FILES, ids=[f"{e}-{o.name}" for e, _, o in RUN_FILES])
def test_a_run_file_is_written_by_its_owner_only(entry, kind, owner, tmp_path):
    run = _run_folder(tmp_path / "run")
    path = os.path.join(run, entry)
    assert check_output(path, kind, owner=owner)
    for other in [None, *Owner]:
        if other is owner or (entry.startswith("embeddings/") and other in (Owner.EVALUATE, Owner.EMBED)):
            continue
        with pytest.raises(OutputError, match=f"--json {path} is "):
            check_output(path, kind, option="--json", owner=other)


def test_what_marks_a_run_folder(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.yaml").write_text("a: 1\n")
    (plain / "results.json").write_text("{}")
    assert not is_run_folder(str(plain))
    check_output(str(plain / "results.json"), FileKind.JSON, option="--json")  # a user's own folder
    # the file being written never marks its own folder: writing X/metrics.jsonl twice works
    atomic_write.write_json({"a": 1}, str(plain / "metrics.jsonl"))
    atomic_write.write_json({"a": 2}, str(plain / "metrics.jsonl"))
    for marker in (".lock", "evaluations.jsonl", "checkpoints/last.pt"):
        folder = tmp_path / marker.replace("/", "_")
        os.makedirs(os.path.dirname(folder / marker), exist_ok=True)
        (folder / marker).write_bytes(b"")
        assert is_run_folder(str(folder))
        with pytest.raises(OutputError, match="only `ssl-bf pretrain` writes"):
            check_output(str(folder / "config.yaml"), FileKind.TEXT, option="--json")
    fresh = str(tmp_path / "fresh")  # a run.dir about to be made: its files are its own already
    with pytest.raises(OutputError, match="only `ssl-bf pretrain` writes"):
        check_output(os.path.join(fresh, "metrics.jsonl"), FileKind.JSON, option="--json", runs=[fresh])


def test_folders_a_command_writes_into(tmp_path):
    run = _run_folder(tmp_path / "run")
    assert check_output_folder(os.path.join(run, "report"), owner=Owner.REPORT)
    with pytest.raises(OutputError, match="only `ssl-bf embed` and `ssl-bf evaluate` write:"):
        check_output_folder(os.path.join(run, "embeddings"), option="--out", owner=Owner.REPORT)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OutputError, match="--out .* is a FIFO"):
        check_output_folder(str(tmp_path / "fifo"), option="--out")
    with pytest.raises(OutputError, match="is a file; give a folder"):
        check_output_folder(os.path.join(run, "config.yaml"), option="--out")


# --- all or nothing ------------------------------------------------------------------------------


def test_all_or_nothing_moves_every_file_into_place_or_none(tmp_path):
    (tmp_path / "a.json").write_text('{"old": 1}')
    (tmp_path / "h.jsonl").write_text('{"line": 1}\n')
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(OutputError, match="FIFO"):
        os.mkfifo(tmp_path / "fifo")
        before[tmp_path / "fifo"] = None
        with atomic_write.all_or_nothing():
            atomic_write.write_json({"new": 1}, str(tmp_path / "a.json"))
            atomic_write.write_torch({"t": torch.ones(1)}, str(tmp_path / "b.pt"))
            atomic_write.append_line('{"line": 2}', str(tmp_path / "h.jsonl"))
            assert not (tmp_path / "b.pt").exists() and (tmp_path / "a.json").read_text() == '{"old": 1}'
            atomic_write.write_json({"x": 1}, str(tmp_path / "fifo"))
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in before)  # no temp file left
    assert all(p.read_bytes() == b for p, b in before.items() if b is not None)
    with atomic_write.all_or_nothing():
        atomic_write.write_json({"new": 1}, str(tmp_path / "a.json"))
        atomic_write.append_line('{"line": 2}', str(tmp_path / "h.jsonl"))
    assert json.loads((tmp_path / "a.json").read_text()) == {"new": 1}
    assert (tmp_path / "h.jsonl").read_text() == '{"line": 1}\n{"line": 2}\n'


def test_evaluate_commits_its_run_files_and_json_together_or_not_at_all(tmp_path):
    """`ssl-bf evaluate`'s last step: a --json refused when written leaves RUN byte-identical (it
    used to be written after RUN's embeddings, results.json and evaluations.jsonl were replaced)."""
    from bad_inputs_harness import digest
    from ssl_bf.eval.evaluate import _commit, run_paths
    from ssl_bf.eval.formats import load_embeddings, make_embeddings, save_embeddings

    run = _run_folder(tmp_path / "run")
    paths = run_paths(run)
    save_embeddings(paths["train"], np.ones((4, 2)), [0, 1, 0, 1], owner=Owner.EVALUATE)
    (tmp_path / "run" / "results.json").write_text('{"knn": "old"}')
    (tmp_path / "run" / "evaluations.jsonl").write_text('{"old": 1}\n')
    new = {s: make_embeddings(np.full((4, 2), 2.0), [1, 0, 1, 0]) for s in ("train", "test")}
    os.mkfifo(tmp_path / "entry.json")
    before = digest(run)
    with pytest.raises(OutputError, match="--json .* FIFO"):
        _commit(run, new, {}, None, {"knn": "new"}, "float32", {"knn": "new"}, str(tmp_path / "entry.json"))
    assert digest(run) == before and stat.S_ISFIFO(os.lstat(tmp_path / "entry.json").st_mode)
    assert not [f for _, _, files in os.walk(tmp_path) for f in files if f.startswith(".ssl-bf-")]

    _commit(run, new, {}, None, {"knn": "new"}, "float32", {"knn": "new"}, str(tmp_path / "entry2.json"))
    assert json.loads(open(paths["results"]).read()) == {"knn": "new"} == json.loads((tmp_path / "entry2.json").read_text())
    assert open(paths["history"]).read() == '{"old": 1}\n{"knn": "new"}\n'
    assert load_embeddings(paths["test"]).labels.tolist() == [1, 0, 1, 0]
