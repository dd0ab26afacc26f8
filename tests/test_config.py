"""Typed config: presets, overrides, errors that help."""
import os
import re
import typing

import pytest
import yaml

from ssl_bf.config import ConfigError, save_config
from ssl_bf.run_config import load_config

from tiny_run import ROOT, TINY, tiny_config


def test_overrides_are_typed():
    cfg = load_config(TINY, ["batchformer.enabled=true", "train.base_lr=1e-3", "data.subset=null",
                             "train.epochs=3", "batchformer.position=backbone"])
    assert cfg.batchformer.enabled is True and cfg.train.base_lr == 1e-3
    assert cfg.data.subset is None and cfg.train.epochs == 3 and cfg.batchformer.position == "backbone"


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'batchformer.enable'; did you mean 'batchformer.enabled'"):
        load_config(TINY, ["batchformer.enable=true"])
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(TINY, ["train.epoch=3"])


def test_bad_values_are_rejected():
    with pytest.raises(ConfigError, match="not one of"):
        load_config(TINY, ["batchformer.position=middle"])
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config(TINY, ["train.epochs=ten"])
    with pytest.raises(ConfigError, match="multiple of train.batch_size"):
        load_config(TINY, ["moco.queue_size=100"])
    with pytest.raises(ConfigError, match="not found"):
        load_config("no/such/file.yaml")


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  batchsize: 64\n")
    with pytest.raises(ConfigError, match="did you mean 'train.batch_size'"):
        load_config(str(path))


def test_a_malformed_or_non_mapping_yaml_file_is_a_config_error_naming_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train: {epochs: 3\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load_config(str(path))
    path.write_text("- seed\n- 3\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: the top level of a config file must be a mapping, got list"):
        load_config(str(path))
    path.write_text("")
    assert load_config(str(path), ["data.subset=512"]).data.subset == 512  # an empty file sets nothing


def test_yaml_helpers_unique_keys_and_did_you_mean(tmp_path):
    from ssl_bf.yaml_io import YamlFileError, did_you_mean, load_yaml_mapping

    path = tmp_path / "twice.yaml"
    path.write_text("a: 1\nb: {c: 1, c: 2}\n")  # YAML 1.2: keys are unique; every reader refuses this
    with pytest.raises(YamlFileError,
                       match=r"twice\.yaml: not valid YAML \(line 2, column 11: the key 'c' is given twice"):
        load_yaml_mapping(str(path), "test file")
    path.write_text("a: 1\n01: x\n1: y\n")  # the same key by value (1), spelled twice
    with pytest.raises(YamlFileError, match="the key '1' is given twice"):
        load_yaml_mapping(str(path), "test file")
    with pytest.raises(YamlFileError, match="test file not found"):
        load_yaml_mapping(str(tmp_path / "nope.yaml"), "test file")
    assert did_you_mean("partion", ["partition", "account"]) == "; did you mean 'partition'?"
    assert did_you_mean("zzz", ["partition", "account"]) == ""


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(TINY, ["seed=7", "batchformer.enabled=true"])
    save_config(cfg, str(tmp_path / "config.yaml"))
    again = load_config(str(tmp_path / "config.yaml"))
    assert again == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["seed"] == 7


def test_a_monitor_bank_smaller_than_k_is_refused_at_load_time():

    with pytest.raises(ConfigError, match="bank_subset \\(16\\) is smaller than monitor.knn_k \\(20\\)"):
        load_config(None, ["monitor.knn_every=1", "monitor.bank_subset=16"])


def test_every_config_key_is_classified_for_resume():
    """A run folder compares its checkpoint's config with the given one: each key must say whether
    it defines the run (a change is refused), may change freely, or may only grow."""
    from ssl_bf.config import EXTEND_ONLY, RESUME_SAFE, RUN_DEFINING, all_keys

    keys = set(all_keys())
    sets = {"RUN_DEFINING": RUN_DEFINING, "RESUME_SAFE": RESUME_SAFE, "EXTEND_ONLY": EXTEND_ONLY}
    unclassified = keys - RUN_DEFINING - RESUME_SAFE - EXTEND_ONLY
    assert not unclassified, f"give these keys a Role in ssl_bf/config/schema.py: {sorted(unclassified)}"
    for name, members in sets.items():
        assert members <= keys, f"{name} names keys that do not exist: {sorted(members - keys)}"
    assert not (RUN_DEFINING & RESUME_SAFE) and not (RUN_DEFINING & EXTEND_ONLY) and not (RESUME_SAFE & EXTEND_ONLY)
    for key in ("method", "seed", "train.batch_size", "train.base_lr", "moco.temperature", "data.subset",
                "augment.recipe", "batchformer.enabled", "backbone.width"):
        assert key in RUN_DEFINING, key


def test_resume_differences_list_every_changed_run_setting():
    from ssl_bf.config import resume_differences, to_dict

    saved = to_dict(load_config(TINY))
    assert resume_differences(saved, load_config(TINY, ["train.epochs=5", "train.log_every=7", "run.dir=x"])) == []
    diffs = resume_differences(saved, load_config(TINY, ["train.batch_size=128", "seed=2", "train.epochs=1"]))
    assert diffs == [("seed", 0, 2), ("train.epochs", 2, 1), ("train.batch_size", 64, 128)]
    del saved["batchformer"]["scope"]  # a config saved before the key existed: compared at its default
    assert resume_differences(saved, load_config(TINY)) == []


def test_numbers_must_be_finite_and_in_range():
    for override, words in [("train.base_lr=nan", "finite"), ("train.base_lr=-1", "positive"),
                            ("moco.temperature=0", "positive"), ("train.epochs=true", "expected an integer"),
                            ("batchformer.dropout=1", "[0, 1)"), ("moco.momentum=2", "[0, 1]"),
                            ("train.weight_decay=-1", "at least 0"), ("train.batch_size=1", "in [2, 65536]")]:
        with pytest.raises(ConfigError, match=re.escape(words)):
            load_config(TINY, [override])
    # text keys take the override as written
    assert load_config(TINY, ["run.dir=on", "data.root=1e3"]).run.dir == "on"
    assert load_config(TINY, ["data.root=1e3"]).data.root == "1e3"
    assert load_config(TINY, ["data.root=null"]).data.root is None


@pytest.mark.parametrize("method,extra,expected", [
    ("mocov2", (), "context_matched"), ("mocov3", (), "same_batch"),
    ("mocov2", ("batchformer.position=backbone",), "pre_only"),
    ("mocov2", ("batchformer.enqueue_both=true",), "pre_only")])
def test_key_branch_auto_resolves_to_the_methods_default_and_is_saved_resolved(method, extra, expected):
    from ssl_bf.config import to_dict

    cfg = tiny_config(None, f"method={method}", "batchformer.enabled=true", *extra)
    assert cfg.batchformer.key_branch == expected
    assert to_dict(cfg)["batchformer"]["key_branch"] == expected


@pytest.mark.parametrize("overrides,says", [
    (("method=mocov3",), "MoCo-v2's"),
    (("batchformer.position=backbone",), "position=projection"),
    (("batchformer.enqueue_both=true",), "enqueue_both"),
])
def test_context_matched_refuses_what_it_cannot_do(overrides, says):
    with pytest.raises(ConfigError, match=says):
        tiny_config(None, "batchformer.enabled=true", "batchformer.key_branch=context_matched", *overrides)


def test_docs_config_md_is_the_schemas_reference():
    from ssl_bf.config.reference import reference_markdown

    with open(os.path.join(ROOT, "docs", "config.md")) as f:
        assert f.read() == reference_markdown(), "regenerate: python -m ssl_bf.config.reference > docs/config.md"


def test_every_key_states_its_facts_beside_its_default():
    from ssl_bf.config import Range, Role, all_keys, key_field

    for key in all_keys():
        meta = key_field(key).metadata
        assert isinstance(meta.get("role"), Role) and meta.get("help"), key
        assert meta.get("range") is None or isinstance(meta["range"], Range), key


def test_loading_resolves_a_copy_and_the_checks_change_nothing():
    import copy

    from ssl_bf.config import read_config
    from ssl_bf.run_config import finish_config

    raw = read_config(TINY, ["method=mocov3", "batchformer.enabled=true", "backbone.name=vit_mini",
                             "moco.split_bn_groups=4"])
    before = copy.deepcopy(raw)
    done = finish_config(raw)
    assert raw == before and raw.train.optimizer == "auto" and raw.batchformer.key_branch == "auto"
    assert (done.train.optimizer, done.train.base_lr, done.train.weight_decay, done.train.warmup_epochs) == \
        ("adamw", 0.06, 0.1, 40.0)  # tiny.yaml gives base_lr; the rest is MoCo-v3's ViT recipe
    assert done.batchformer.key_branch == "same_batch"
    assert finish_config(done) == done  # resolving a resolved config is the identity


@pytest.mark.parametrize("method,backbone,expected", [
    ("mocov2", "resnet18", ("sgd", 0.03, 1e-4, 0.0)),
    ("mocov3", "resnet50", ("lars", 0.6, 1e-6, 10.0)),
    ("mocov3", "vit_small", ("adamw", 1.5e-4, 0.1, 40.0))])
def test_optimizer_defaults_are_the_methods_reference_recipes(method, backbone, expected):
    t = load_config(None, [f"method={method}", f"backbone.name={backbone}"]).train
    assert (t.optimizer, t.base_lr, t.weight_decay, t.warmup_epochs) == expected
    given = load_config(None, [f"method={method}", "train.optimizer=sgd", "train.base_lr=0.5"]).train
    assert (given.optimizer, given.base_lr) == ("sgd", 0.5)  # what the user gives is kept


def test_vit_tiny_is_refused_with_its_new_name_and_saved_configs_migrate():
    from ssl_bf.config import resume_differences, to_dict
    from ssl_bf.run_config import saved_config

    with pytest.raises(ConfigError, match="vit_mini.*timm's vit_tiny_patch16_224 has 12 blocks"):
        load_config(TINY, ["backbone.name=vit_tiny"])
    cfg = load_config(TINY, ["backbone.name=vit_mini", "method=mocov3", "backbone.patch_size=4"])
    saved = to_dict(cfg)
    saved["backbone"]["name"] = "vit_tiny"  # what a checkpoint of 2026-12-04 or earlier holds
    assert saved_config(saved) == cfg
    assert resume_differences(saved, cfg) == []


# --- the strict configuration language (issue 21, cause 5) -----------------------------------------
@pytest.mark.parametrize("text, value", [
    ("010", 10), ("0o10", 8), ("0x1f", 31), ("-0", 0), ("+7", 7), ("1e3", 1000.0), ("1.", 1.0), (".5", 0.5),
    ("-.inf", float("-inf")), ("true", True), ("False", False), ("TRUE", True), ("~", None), ("null", None),
    ("", None), ("1:30", "1:30"), ("1_000", "1_000"), ("yes", "yes"), ("off", "off"), ("None", "None"),
    ("0b101", "0b101"), ("2024-01-01", "2024-01-01"), ("0o8", "0o8"), ("0x", "0x"), ("1e", "1e"),
])
def test_yaml_scalars_follow_the_1_2_core_schema(text, value):
    from ssl_bf.yaml_io import read_yaml_value

    assert read_yaml_value(text, "t") == value and type(read_yaml_value(text, "t")) is type(value)


@pytest.mark.parametrize("text, words", [
    ("a: &x [*x]", "recursive alias"), ("a: &x {b: *x}", "recursive alias"), ("{[1]: 2}", "complex key"),
    ("? {a: 1}\n: 2", "complex key"), ("{a: 1, a: 2}", "given twice"), ("{1: a, 01: b}", "given twice"),
    ("9" * 30, "64 bits"), ("0x" + "f" * 17, "64 bits"), ("!!int 1.5", "not a YAML 1.2 int"),
    ("!!bool yes", "not a YAML 1.2 bool"), ("!!set {a: null}", "tag"), ("!!timestamp 2024-01-01", "tag"),
    ("!!binary aGk=", "tag"), ("[" * 100 + "]" * 100, "nested deeper"), ("a: *nope", "undefined alias"),
])
def test_the_strict_loader_refuses_in_one_line(text, words):
    from ssl_bf.yaml_io import YamlFileError, read_yaml_value

    with pytest.raises(YamlFileError) as err:
        read_yaml_value(text, "where")
    assert words in str(err.value) and str(err.value).startswith("where: not valid YAML (")
    assert "\n" not in str(err.value)


def test_an_alias_bomb_is_refused_in_linear_time():
    from ssl_bf.yaml_io import MAX_VALUES, YamlFileError, read_yaml_value

    levels = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 30))  # 10**30 values expanded
    with pytest.raises(YamlFileError, match=f"more than {MAX_VALUES} values"):
        read_yaml_value(levels, "bomb")
    chain = "a0: &a0 [1]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 100))  # deep, not wide
    with pytest.raises(YamlFileError, match="more than 64 levels"):
        read_yaml_value(chain, "chain")
    shared = "a: &a [1, 2]\n" + "".join(f"k{i}: *a\n" for i in range(1000))  # sharing is fine
    assert len(read_yaml_value(shared, "shared")) == 1001


@pytest.mark.parametrize("value", ["yes", "no", "on", "010", "0o7", "0x1f", "1e3", "1:30", "~", "", "null", "<<",
                                   "true", ".inf", "1_000", "2024-01-01", "plain", "a: b", "- x", "é", 10, 1.5e-5,
                                   1e17, float("inf"), None, True, [1, "010"], {"k": "on"}])
def test_dump_yaml_reads_back_the_same_under_yaml_1_2_and_1_1(value):
    from ssl_bf.yaml_io import dump_yaml, read_yaml_value

    text = dump_yaml({"k": value})
    assert read_yaml_value(text, "t") == {"k": value}
    assert yaml.safe_load(text) == {"k": value}  # an outside YAML 1.1 reader agrees


def test_saved_config_quotes_text_that_looks_like_a_number(tmp_path):
    cfg = load_config(TINY, ["run.dir=1e3", "data.root=010", "train.device=cpu"])
    assert (cfg.run.dir, cfg.data.root) == ("1e3", "010")  # text keys take the override as written
    save_config(cfg, str(tmp_path / "config.yaml"))
    assert load_config(str(tmp_path / "config.yaml")) == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["run"]["dir"] == "1e3"


def test_an_override_given_twice_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"the key 'seed' is set twice \('seed=1' and 'seed=1'\)"):
        load_config(TINY, ["seed=1", "seed=1"])
    with pytest.raises(ConfigError, match="'train.epochs' is set twice"):
        load_config(TINY, ["train={epochs: 1, log_every: 1}", "train.epochs=2"])
    assert load_config(TINY, ["train={epochs: 1, log_every: 1}", "seed=3"]).train.epochs == 1


def test_values_are_never_reinterpreted():
    for override, words in [("run.progress=yes", "true and false"), ("train.amp=1", "expected true or false"),
                            ("seed=1_000", "1_000"), ("data.subset=none", "null or ~"),
                            ("train.base_lr=infinity", "finite"), ("train.epochs=1.5", "whole number"),
                            ("batchformer.insert_after=[1,3", "not valid YAML"),
                            ("batchformer.insert_after=1,[3", "bracket"), ("method=", "'' is not one of")]:
        with pytest.raises(ConfigError, match=re.escape(words)):
            load_config(TINY, [override])
    cfg = load_config(TINY, ["seed=0x10", "train.epochs=1e1", "moco.queue_size=0o400", "data.root=~"])
    assert (cfg.seed, cfg.train.epochs, cfg.moco.queue_size, cfg.data.root) == (16, 10, 256, None)


def test_a_config_files_bad_value_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {epochs: 1:30}\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: train.epochs: expected an integer, got the text '1:30'")):
        load_config(str(path))


def test_every_size_key_has_an_upper_bound():
    from ssl_bf.config import all_keys, key_field, key_type

    for key in all_keys():  # (batchformer.insert_after's items are block numbers, checked by the method)
        if key_type(key) in (int, typing.Optional[int]):
            bound = key_field(key).metadata["range"]
            assert bound is not None and bound.high is not None, f"{key} has no upper bound"


def test_a_model_that_cannot_be_allocated_is_one_config_error(monkeypatch):
    import torch

    from ssl_bf.models import registry

    cfg = load_config(TINY, ["moco.hidden_dim=4096"])
    monkeypatch.setattr(registry, "_available_bytes", lambda: 1000)  # as if memory were almost full
    with pytest.raises(ConfigError, match=r"needs .* GiB for its weights alone.*lower the sizes that set it "
                                          r"\(backbone.name=resnet18\): moco.hidden_dim=4096$"):
        registry.build_model(cfg, 1, 28)
    monkeypatch.setattr(registry, "_available_bytes", lambda: None)  # not measurable: the allocation decides

    def fail_to_allocate(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:83] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(registry, "build_config_backbone", fail_to_allocate)
    with pytest.raises(ConfigError, match="ran out of memory .*moco.hidden_dim=4096"):
        registry.build_encoder(cfg, 1)
    torch.manual_seed(0)


def test_the_memory_check_leaves_the_seeded_model_as_it_was():
    import torch

    from ssl_bf.models.registry import build_model, method_class

    cfg = load_config(TINY)
    torch.manual_seed(0)
    checked = build_model(cfg, 1, 28)
    after_checked = torch.rand(4)
    torch.manual_seed(0)
    plain = method_class(cfg.method)(cfg, 1, 28, None)
    after_plain = torch.rand(4)
    assert torch.equal(after_checked, after_plain)
    for (name, a), (_, b) in zip(checked.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("recipe", ["mocov2", "mocov3", "light"])
@pytest.mark.parametrize("blur", [True, False])
def test_min_image_size_is_the_smallest_crop_the_views_process(recipe, blur):
    """The views run at the stated minimum and fail one pixel below (the blur's reflect padding)."""
    import torch

    from ssl_bf.data.augment import build_two_views, min_image_size

    least = min_image_size(recipe, blur)
    batch = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    torch.manual_seed(0)
    v1, v2 = build_two_views(recipe, least, 3, (0.5,) * 3, (0.5,) * 3, blur=blur)(batch)
    assert v1.shape == (4, 3, least, least)
    if least > 1:
        views = build_two_views(recipe, least - 1, 3, (0.5,) * 3, (0.5,) * 3, blur=blur)
        with pytest.raises(Exception):
            for _ in range(20):  # the blur is random per sample: p=0.5 at most 20 tries
                views(batch)


def test_repeated_options_merge_a_list_and_refuse_a_single_value():
    from ssl_bf.cli_args import ArgumentError, Parser

    p = Parser(prog="t")
    p.add_argument("--k", type=int, nargs="+", default=[20])
    p.add_argument("--json")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--loud", dest="quiet", action="store_false")
    p.add_argument("rest", nargs="*")
    assert p.parse_args(["--k", "1", "--k", "2", "3"]).k == [1, 2, 3]
    assert p.parse_args(["--quiet", "--quiet"]).quiet is True
    assert p.parse_intermixed_args(["a", "--json", "x", "b"]).rest == ["a", "b"]
    for argv, words in ((["--json", "a", "--json", "b"], "--json: given twice (--json a and --json b)"),
                        (["--json=a", "--js", "a"], "given twice"), (["--quiet", "--loud"], "--quiet and --loud")):
        with pytest.raises(ArgumentError, match=re.escape(words)):
            p.parse_args(argv)
    with pytest.raises(ArgumentError, match="given twice"):
        p.parse_intermixed_args(["a", "--json", "x", "b", "--json", "y"])
    assert p.parse_args(["--json", "z"]).json == "z"  # a parse starts with a clean record
