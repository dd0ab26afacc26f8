"""Fuzzing what `ssl-bf submit` reads besides the config (issue 21, cause 5): `--sweep` values,
sweep files and cluster presets, all through `submit --dry-run`. The contract (tests/fuzz_contract.py):
exit 0 or 2, never a traceback, a refusal names the file or option; `--sweep` values split at the
commas outside brackets and quotes only, so a bracketed list is one value."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz_contract import check_contract, count, fuzz_examples, run_cli, snapshot
from tiny_run import TINY

# --- submit's own YAML and lists: --sweep values, sweep files, cluster presets -------------------------
SWEEP_VALUES = st.one_of(st.sampled_from(["0", "1", "010", "[1,3]", "[2]", "[]", "'a,b'", "x", "1e3", "true"]),
                         st.lists(st.integers(0, 5), max_size=3).map(lambda v: "[" + ",".join(map(str, v)) + "]"))


@settings(max_examples=fuzz_examples(150))
@given(values=st.lists(SWEEP_VALUES, min_size=1, max_size=4, unique=True))
def test_sweep_values_split_at_top_level_commas_only(values):
    from ssl_bf.launch.sweep import parse_sweep

    count("submit: --sweep values", 1)
    assert parse_sweep([f"batchformer.insert_after={','.join(values)}"]) == {"batchformer.insert_after": values}


@settings(max_examples=fuzz_examples(60))
@given(key=st.sampled_from(["seed", "batchformer.insert_after", "train.epochs", "data.root", "nope"]),
       values=st.text(alphabet="0123[],'\" x:{}", min_size=1, max_size=10))
def test_any_sweep_option_gives_exit_0_or_2(tmp_path, key, values):
    count("submit: --sweep text", 1)
    code, out = run_cli(["submit", "pretrain", "--cluster", "local", "--dry-run", "--sweep", f"{key}={values}",
                         "--", "--config", TINY, f"run.dir={tmp_path}/s"])
    check_contract(code, out, names=("--sweep", key, values))


SWEEP_DOCS = st.one_of(
    st.builds(lambda k, v: f"axes:\n  {k}: [{v}]\n",
              st.sampled_from(["seed", "batchformer.insert_after", "x.y", "[a]"]),
              st.sampled_from(["0, 1", "010", "'010'", "[1, 3], [2]", "yes, no", "1:30", "&a [*a]", "{a: 1}", ""])),
    st.builds(lambda n, body: f"variants:\n  {n}: {body}\n", st.sampled_from(["a", "on", "true", "010", "~", "[x]"]),
              st.sampled_from(["{seed: 1}", "{seed: 1, seed: 2}", "{seed: [1, 2]}", "{run.dir: x}", "3", "{}",
                               "&v {seed: *v}", "{seed: !!set {a: null}}"])),
    st.text(max_size=60))


@settings(max_examples=fuzz_examples(80))
@given(doc=SWEEP_DOCS)
def test_any_sweep_file_gives_exit_0_or_2_naming_it(tmp_path, doc):
    count("submit: sweep files", 1)
    path = tmp_path / "sweep.yaml"
    path.write_text(doc, encoding="utf-8", errors="surrogatepass")
    before = snapshot([str(path)])
    code, out = run_cli(["submit", "pretrain", "--cluster", "local", "--dry-run", "--sweep-file", str(path), "--",
                         "--config", TINY, f"run.dir={tmp_path}/s"])
    check_contract(code, out, names=(str(path), "--sweep-file"), before=before)


PRESET_DOCS = st.one_of(
    st.builds(lambda k, v: (f"cluster: local\n{k}: {v}\n", "--" + k.replace("_", "-")),
              st.sampled_from(["time", "nodes", "setup", "slurm_extra", "partition", "exclusive", "max_requeues"]),
              st.sampled_from(["10", "010", "0o10", "1:30", "yes", "true", "~", "[a, b]", "{a: 1}", "&s [*s]",
                               "9" * 30, "!!set {a: null}", "'x'"])),
    st.tuples(st.text(max_size=60), st.just("--preset")))


@settings(max_examples=fuzz_examples(80))
@given(doc_and_option=PRESET_DOCS)
def test_any_cluster_preset_gives_exit_0_or_2_naming_it(tmp_path, doc_and_option):
    count("submit: cluster presets", 1)
    doc, option = doc_and_option  # a preset value out of range is named as its option (--nodes)
    path = tmp_path / "preset.yaml"
    path.write_text(doc, encoding="utf-8", errors="surrogatepass")
    code, out = run_cli(["submit", "pretrain", "--preset", str(path), "--dry-run", "--",
                         "--config", TINY, f"run.dir={tmp_path}/s"])
    check_contract(code, out, names=(str(path), "--preset", option))
