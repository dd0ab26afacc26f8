"""Typed config: presets, overrides, errors that help."""
import os
import re

import pytest
import yaml

from ssl_bf.config import ConfigError, save_config
from ssl_bf.run_config import load_config

from tiny_run import ROOT, TINY, tiny_config


def test_overrides_are_typed():
    cfg = load_config(TINY, ["batchformer.enabled=true", "train.base_lr=1e-3", "data.subset=none",
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
    with pytest.raises(ConfigError, match="expected int"):
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
    path.write_text("a: 1\nb: {c: 1, c: 2}\n")
    assert load_yaml_mapping(str(path), "test file") == {"a": 1, "b": {"c": 2}}  # YAML's own rule: last wins
    with pytest.raises(YamlFileError, match=r"twice\.yaml: line 2: the key 'c' is given twice"):
        load_yaml_mapping(str(path), "test file", unique_keys=True)
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
                            ("moco.temperature=0", "positive"), ("train.epochs=true", "expected int"),
                            ("batchformer.dropout=1", "[0, 1)"), ("moco.momentum=2", "[0, 1]"),
                            ("train.weight_decay=-1", "at least 0"), ("train.batch_size=1", "at least 2")]:
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
