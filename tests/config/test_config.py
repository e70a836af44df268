"""Config strictness: unknown keys with suggestions, types, ranges, overrides."""

from __future__ import annotations

import pytest

from mobiletune.config.load import (
    apply_overrides,
    config_from_dict,
    load_config,
    parse_override,
)
from mobiletune.config.schema import NUM_BLOCKS
from mobiletune.errors import ConfigError


def test_defaults_and_nested_values():
    cfg = config_from_dict({"model": {"arch": "mobilenet_v2"}, "train": {"lr": "1e-4"}})
    assert cfg.model.arch == "mobilenet_v2"
    assert cfg.train.lr == pytest.approx(1e-4)  # YAML 1.1 reads 1e-4 as a string
    assert cfg.data.image_size == 224 and cfg.finetune.unfreeze == 0


@pytest.mark.parametrize("raw, key, hint", [
    ({"trian": {}}, "trian", "train"),
    ({"train": {"epoch": 3}}, "train.epoch", "train.epochs"),
    ({"data": {"lr": 0.1}}, "data.lr", "train.lr"),
    ({"model": {"achr": "mobilenet_v2"}}, "model.achr", "model.arch"),
])
def test_unknown_key_names_key_and_suggestion(raw, key, hint):
    with pytest.raises(ConfigError) as e:
        config_from_dict(raw, "cats.yaml")
    assert f"'{key}'" in str(e.value) and "cats.yaml" in str(e.value)
    assert f"Did you mean '{hint}'" in str(e.value)


@pytest.mark.parametrize("raw, key", [
    ({"train": {"epochs": "five"}}, "train.epochs"),
    ({"train": {"epochs": 2.5}}, "train.epochs"),
    ({"data": {"cache": "yes"}}, "data.cache"),
    ({"train": {"epochs": True}}, "train.epochs"),
    ({"data": "root"}, "data"),
])
def test_wrong_type(raw, key):
    with pytest.raises(ConfigError) as e:
        config_from_dict(raw)
    assert e.value.key == key


@pytest.mark.parametrize("raw, key", [
    ({"train": {"epochs": 0}}, "train.epochs"),
    ({"train": {"lr": -1e-3}}, "train.lr"),
    ({"train": {"lr": 0}}, "train.lr"),
    ({"data": {"batch_size": 0}}, "data.batch_size"),
    ({"data": {"val_split": 1.0}}, "data.val_split"),
    ({"model": {"arch": "resnet50"}}, "model.arch"),
    ({"data": {"workers": "many"}}, "data.workers"),
])
def test_out_of_range(raw, key):
    with pytest.raises(ConfigError) as e:
        config_from_dict(raw)
    assert e.value.key == key


def test_unfreeze_range_depends_on_arch():
    ok = config_from_dict({"model": {"arch": "mobilenet_v2"}, "finetune": {"unfreeze": 19}})
    assert ok.finetune.unfreeze == NUM_BLOCKS["mobilenet_v2"]
    with pytest.raises(ConfigError, match="1-13"):
        config_from_dict({"model": {"arch": "mobilenet_v3_small"}, "finetune": {"unfreeze": 14}})


def test_overrides_and_set():
    key, value = parse_override("train.lr=3e-4")
    raw = apply_overrides({"train": {"epochs": 2}}, [(key, value), ("seed", 7)])
    cfg = config_from_dict(raw)
    assert (cfg.train.lr, cfg.train.epochs, cfg.seed) == (pytest.approx(3e-4), 2, 7)
    with pytest.raises(ConfigError, match="Did you mean 'train.lr'"):
        parse_override("train.lrr=1")
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("train.lr")


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_config(empty)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: 3\n  lr: [1\n")
    with pytest.raises(ConfigError, match="line"):
        load_config(bad)


def test_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  root: pics\nmodel:\n  weights: w.pth\n")
    cfg = load_config(p)
    assert cfg.data.root == str(tmp_path / "pics")
    assert cfg.model.weights == str(tmp_path / "w.pth")
    assert cfg.output == str(tmp_path / "runs")
