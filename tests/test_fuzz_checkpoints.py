"""Fuzzing the resume of a checkpoint: a real tiny run's RUN/checkpoints/last.pt with one field
mutated (the position, RNG states, optimiser state, model tensors, the queue pointer, dropped
keys, wrong types), then `ssl-bf pretrain` on it, in-process.

The contract (tests/fuzz_contract.py): exit 0 or 2, never a traceback; a refusal names the field
and leaves every file of the run folder byte-identical. The oracle for the position: the tiny run
finished its one epoch of 4 steps (step 4, epoch 1, step_in_epoch 0), so a single changed position
field can never be consistent: it must be refused. An unmutated checkpoint resumes.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz_contract import check_contract, count, fuzz_examples, run_cli, snapshot, watched_files
from tiny_run import TINY

RESUME = ["--config", TINY, "train.epochs=1", "data.subset=256", "moco.queue_size=128"]
POSITION = {"step": 4, "epoch": 1, "step_in_epoch": 0}  # where the finished tiny run stands


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> str:
    run = str(tmp_path_factory.mktemp("fuzz_ckpt") / "run")
    code, out = run_cli(["pretrain", *RESUME, f"run.dir={run}"])
    assert code == 0, out
    state = torch.load(os.path.join(run, "checkpoints", "last.pt"), weights_only=True)
    assert {k: state[k] for k in POSITION} == POSITION
    return run


def _resume_mutated(base: str, mutate, names: tuple[str, ...] = ()) -> tuple[int, str]:
    """Copy the run, rewrite its checkpoint with `mutate(state)`, resume it and check the contract:
    exit 0 or 2, no traceback, a refusal names one of `names` and changes no file of the run."""
    run = os.path.join(tempfile.mkdtemp(prefix="fuzz-ckpt-"), "run")
    try:
        shutil.copytree(base, run)
        path = os.path.join(run, "checkpoints", "last.pt")
        state = torch.load(path, weights_only=True)
        mutate(state)
        torch.save(state, path)
        before = snapshot(watched_files(run))
        code, out = run_cli(["pretrain", *RESUME, f"run.dir={run}"])
        check_contract(code, out, names=names, before=before if code else None)
        return code, out
    finally:
        shutil.rmtree(os.path.dirname(run), ignore_errors=True)


def test_an_unmutated_checkpoint_resumes(finished_run):
    code, out = _resume_mutated(finished_run, lambda state: None)
    assert code == 0, out


# --- the position -------------------------------------------------------------------------------
ints = st.one_of(st.integers(-3, 9), st.integers(-2**62, 2**62), st.sampled_from([999, -5, 2**31, 2**63 - 1]))


@settings(max_examples=fuzz_examples(25))
@given(field=st.sampled_from(sorted(POSITION)), value=ints)
def test_a_changed_position_is_refused_naming_the_field(finished_run, field, value):
    count("checkpoints: position", 1)
    code, out = _resume_mutated(finished_run, lambda state: state.__setitem__(field, value), (f"'{field}'",))
    assert (code == 0) == (value == POSITION[field]), (field, value, out[-1500:])


# --- wrong types and dropped keys ------------------------------------------------------------------
junk = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4),
                 st.lists(st.integers(-3, 3), max_size=3), st.builds(torch.zeros, st.integers(0, 3)),
                 st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
TOP_FIELDS = ["model", "optimizer", "config", "epoch", "step", "step_in_epoch", "rng", "world_size", "loss",
              "in_channels", "image_size"]


@settings(max_examples=fuzz_examples(25))
@given(field=st.sampled_from(TOP_FIELDS), value=st.one_of(junk, st.just("<drop>")))
def test_a_field_of_the_wrong_type_or_dropped_is_refused(finished_run, field, value):
    count("checkpoints: types", 1)
    optional = field in ("world_size", "loss", "in_channels", "image_size")

    def mutate(state):
        if value == "<drop>":
            state.pop(field)
        else:
            state[field] = value
    names = (f"'{field}'", "other settings") if field == "config" else (f"'{field}'",)
    code, out = _resume_mutated(finished_run, mutate, names)
    dropped_optional = optional and value == "<drop>"
    if not dropped_optional and not (field == "loss" and isinstance(value, float)):
        assert code == 2, (field, value, out[-1500:])


# --- RNG states ------------------------------------------------------------------------------------
def _mersenne(seed: int, pos: int, bad_word: tuple[int, int] | None) -> torch.Tensor:
    """624 words in [0, 2**32) from `seed` (one replaced by `bad_word` = (index, value)), then `pos`."""
    words = np.random.default_rng(seed).integers(0, 2**32, size=624, dtype=np.int64)
    if bad_word is not None:
        words[bad_word[0]] = bad_word[1]
    return torch.from_numpy(np.append(words, pos))


rng_values = st.one_of(
    st.builds(lambda n, dtype: torch.zeros(n, dtype=dtype), st.integers(0, 700),
              st.sampled_from([torch.uint8, torch.int64, torch.int32, torch.float32])),
    st.builds(lambda n: torch.randint(0, 256, (n,), dtype=torch.uint8), st.sampled_from([7, 5056, 5048])),
    junk)


@settings(max_examples=fuzz_examples(15))
@given(key=st.sampled_from(["torch", "numpy", "python", "<drop torch>", "<drop python>"]), value=rng_values)
def test_a_bad_rng_state_is_refused_naming_it(finished_run, key, value):
    count("checkpoints: rng", 1)

    def mutate(state):
        if key.startswith("<drop"):
            state["rng"].pop(key.split()[1][:-1])
        else:
            state["rng"][key] = value
    code, out = _resume_mutated(finished_run, mutate, ("rng",))
    assert code == 2 or key == "torch", out[-1500:]  # random bytes of the right size may be a valid state


@settings(max_examples=fuzz_examples(15))
@given(key=st.sampled_from(["numpy", "python"]), seed=st.integers(0, 2**32),
       pos=st.one_of(st.integers(0, 624), st.integers(-2**40, 2**40)),
       bad_word=st.none() | st.tuples(st.integers(0, 623), st.integers(2**32, 2**62) | st.integers(-2**62, -1)))
def test_a_mersenne_state_is_accepted_exactly_when_its_words_and_position_are_in_range(finished_run, key, seed, pos,
                                                                                        bad_word):
    count("checkpoints: rng", 1)
    state_of = _mersenne(seed, pos, bad_word)
    code, out = _resume_mutated(finished_run, lambda state: state["rng"].__setitem__(key, state_of), (f"rng['{key}']",))
    assert code == (0 if 0 <= pos <= 624 and bad_word is None else 2), out[-1500:]


# --- optimiser state, model tensors, the queue pointer ----------------------------------------------
shapes = st.lists(st.integers(0, 9), min_size=0, max_size=4).map(tuple)


@settings(max_examples=fuzz_examples(20))
@given(index=st.integers(0, 10_000), shape=shapes, what=st.sampled_from(["shape", "nan", "int", "none", "0-d",
                                                                          "drop", "junk-key", "groups", "setting"]))
def test_a_bad_optimizer_state_is_refused_naming_it(finished_run, index, shape, what):
    count("checkpoints: optimizer", 1)
    changed = {}

    def mutate(state):
        opt = state["optimizer"]
        pid = sorted(opt["state"])[index % len(opt["state"])]
        entry = opt["state"][pid]
        buf = entry["momentum_buffer"]
        changed["same"] = what == "shape" and tuple(buf.shape) == shape
        if what == "shape":
            entry["momentum_buffer"] = torch.zeros(shape)
        elif what == "nan":
            entry["momentum_buffer"] = buf.clone().fill_(float("nan"))
        elif what == "int":
            entry["momentum_buffer"] = buf.to(torch.int64)
        elif what == "none":
            entry["momentum_buffer"] = None
        elif what == "0-d":
            entry["momentum_buffer"] = torch.tensor(0.5)
        elif what == "drop":
            entry.pop("momentum_buffer")
        elif what == "junk-key":
            opt["state"][f"p{index}"] = {"momentum_buffer": buf}
        elif what == "groups":
            opt["param_groups"] = opt["param_groups"] * 2 if index % 2 else []
        else:
            opt["param_groups"][0]["momentum"] = "fast" if index % 2 else float("nan")
    code, out = _resume_mutated(finished_run, mutate, ("optimizer",))
    assert code == (0 if changed["same"] else 2), (what, shape, out[-1500:])


@pytest.fixture(scope="module")
def model_keys(finished_run) -> list[str]:
    return sorted(torch.load(os.path.join(finished_run, "checkpoints", "last.pt"), weights_only=True)["model"])


@settings(max_examples=fuzz_examples(20))
@given(index=st.integers(0, 10_000), shape=shapes, what=st.sampled_from(["shape", "nan", "dtype", "drop", "extra",
                                                                          "ptr", "ptr-shape"]),
       ptr=st.integers(-2**40, 2**40))
def test_a_bad_model_tensor_or_queue_pointer_is_refused_naming_it(finished_run, model_keys, index, shape, what, ptr):
    count("checkpoints: model", 1)
    key = {"extra": f"extra{index}", "ptr": "queue_ptr", "ptr-shape": "queue_ptr"}.get(what) or \
        model_keys[index % len(model_keys)]
    changed = {}

    def mutate(state):
        model = state["model"]
        if what == "shape":
            changed["same"] = tuple(model[key].shape) == shape and model[key].dtype == torch.float32
            model[key] = torch.zeros(shape)
        elif what == "nan":
            changed["same"] = not model[key].is_floating_point() or model[key].numel() == 0
            model[key] = model[key].clone().fill_(float("nan")) if model[key].is_floating_point() else model[key]
        elif what == "dtype":
            model[key] = model[key].to(torch.float64 if model[key].dtype != torch.float64 else torch.float32)
        elif what == "drop":
            model.pop(key)
        elif what == "extra":
            model[key] = torch.zeros(1)
        elif what == "ptr":  # any row of the queue is a position the queue can continue from
            changed["same"] = 0 <= ptr < 128
            model[key] = torch.tensor(ptr)
        else:
            model[key] = torch.zeros(shape, dtype=torch.long) if shape else torch.tensor([1, 2])
    code, out = _resume_mutated(finished_run, mutate, (f"'{key}'",))
    assert code == (0 if changed.get("same") else 2), (what, key, shape, ptr, out[-1500:])
