"""A bad config or command line is exit 2 with one message naming what, where and what to
do; random documents thrown at the loader give a Config or a ConfigError, nothing else."""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mobiletune.config.load import absolutize, config_from_dict, read_yaml
from mobiletune.config.schema import SECTIONS, Config, all_keys
from mobiletune.errors import ConfigError
from tests.conftest import make_folder
from tests.helpers_robust import (
    invoke,
    one_thread,  # noqa: F401 (autouse fixture)
    write_config,
)

GOOD = "name: t\nmodel:\n  arch: mobilenet_v3_small\n  weights: none\n"

# (yaml text, extra CLI args, substrings the one-paragraph message must contain)
FILE_CASES = {
    "unknown_key": ("name: t\nmodle:\n  arch: mobilenet_v2\n", [],
                    ["'modle'", "Did you mean 'model'"]),
    "unknown_nested_key": (GOOD + "train:\n  epoch: 3\n", [], ["'train.epoch'", "train.epochs"]),
    "wrong_type": (GOOD + "train:\n  epochs: five\n", [], ["'train.epochs'", "must be int"]),
    "auto_typo": (GOOD + "finetune:\n  lr: atuo\n", [],
                  ["'finetune.lr'", "must be float or auto", "Did you mean 'auto'"]),
    "section_not_mapping": (GOOD + "data: pics\n", [], ["'data'", "mapping"]),
    "zero_epochs": (GOOD + "train:\n  epochs: 0\n", [], ["'train.epochs'", "range"]),
    "negative_lr": (GOOD + "train:\n  lr: -0.001\n", [], ["'train.lr'", "range"]),
    "zero_lr": (GOOD + "finetune:\n  lr: 0\n", [], ["'finetune.lr'", "range"]),
    "nan_lr": (GOOD + "train:\n  lr: .nan\n", [], ["'train.lr'", "finite"]),
    "zero_batch": (GOOD + "data:\n  batch_size: 0\n", [], ["'data.batch_size'", "range"]),
    "negative_batch": (GOOD + "data:\n  batch_size: -4\n", [], ["'data.batch_size'"]),
    "unfreeze_too_many": (GOOD + "finetune:\n  unfreeze: 14\n", [],
                          ["'finetune.unfreeze'", "13 blocks", "1-13"]),
    "unfreeze_negative": (GOOD + "finetune:\n  unfreeze: -1\n", [], ["'finetune.unfreeze'"]),
    "workers_not_ascii": (GOOD + "data:\n  workers: '²'\n", [], ["'data.workers'"]),
    "bad_date": (GOOD + "seed: 2024-13-45\n", [], ["not valid YAML", "month"]),
    "yaml_syntax": ("name: t\ntrain:\n  epochs: 3\n   lr: 2\n", [], ["not valid YAML", "line 4"]),
    "yaml_unclosed": ("name: t\ntrain:\n  lr: [1\n", [], ["not valid YAML", "line"]),
    "python_tag": ("name: !!python/object/apply:os.system ['true']\n", [], ["not valid YAML"]),
    "not_a_mapping": ("- a\n- b\n", [], ["mapping"]),
    "empty_file": ("", [], ["is empty"]),
    "comments_only": ("# nothing\n", [], ["is empty"]),
    "name_latest": (GOOD.replace("name: t", "name: latest"), [], ["'name'", "latest"]),
    "name_nul": (GOOD.replace("name: t", 'name: "a\\0b"'), [], ["'name'", "NUL"]),
    "cli_zero_epochs": (GOOD, ["--epochs", "0"], ["'train.epochs'", "command line"]),
    "cli_negative_lr": (GOOD, ["--lr", "-1"], ["'train.lr'", "command line"]),
    "cli_zero_batch": (GOOD, ["--batch-size", "0"], ["'data.batch_size'", "command line"]),
    "cli_unfreeze": (GOOD, ["--set", "finetune.unfreeze=40"], ["'finetune.unfreeze'", "1-13"]),
    "set_unknown_key": (GOOD, ["--set", "train.lrr=1"], ["'train.lrr'", "Did you mean 'train.lr'"]),
    "set_no_key": (GOOD, ["--set", "nosuchthing=1"], ["unknown key 'nosuchthing'"]),
    "set_section": (GOOD, ["--set", "data=3"], ["section 'data'", "data.root"]),
    "set_no_equals": (GOOD, ["--set", "train.lr"], ["section.key=value"]),
    "set_empty_key": (GOOD, ["--set", "=3"], ["section.key=value"]),
    "set_bad_value": (GOOD, ["--set", "seed=2024-13-45"], ["'seed'", "must be int"]),
}


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_bad_config_is_exit_2_with_a_clear_message(tmp_path, case):
    text, args, needles = FILE_CASES[case]
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    data = tmp_path / "data"  # never reached: the config is refused first
    res = invoke(["train", "--config", cfg, "--data", data, "--out", tmp_path / "r", *args], 2)
    for needle in needles:
        assert needle in res.stderr, (needle, res.stderr)
    if not case.startswith(("cli_", "set_")):
        assert "bad.yaml" in res.stderr  # names the file
    assert not (tmp_path / "r").exists()  # nothing was started


def test_missing_and_unreadable_config_files(tmp_path):
    res = invoke(["train", "--config", tmp_path / "nope.yaml"], 2)
    assert "nope.yaml" in res.stderr and "not found" in res.stderr
    res = invoke(["train", "--config", tmp_path], 2)
    assert "is a folder" in res.stderr
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert "UTF-8" in invoke(["train", "--config", latin], 2).stderr


def test_unusable_paths_are_exit_2(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(GOOD + "output: ~nobody-at-all/runs\n")
    assert "'output'" in invoke(["train", "--config", cfg], 2).stderr
    blocker = tmp_path / "a_file"
    blocker.write_text("the user's file")
    data = make_folder(tmp_path / "d", per_class=3, size=32)
    cfg = write_config(tmp_path, data, output=str(blocker))
    res = invoke(["train", "--config", cfg, "-q"], 2)
    assert "a_file" in res.stderr and blocker.read_text() == "the user's file"


# Random documents: mostly the real schema's keys (so the checks behind the key lookup are
# reached), with values from everything YAML can produce, edge cases weighted up.
_EDGES = st.sampled_from(["auto", "1e-3", "nan", ".nan", "-inf", "²", "mobilenet_v2", "none", "",
                          "latest", "a\0b", "..", "x/y", "~nobody/x", "0", "64", "65", "-1",
                          float("nan"), float("inf"), 0, -1, 0.0, 1e-30, 2**40, True])
_SCALARS = st.one_of(_EDGES, st.none(), st.booleans(), st.integers(),
                     st.floats(allow_subnormal=False), st.text(max_size=6))
_VALUES = st.recursive(_SCALARS, lambda c: st.lists(c, max_size=3)
                       | st.dictionaries(st.text(max_size=4), c, max_size=3), max_leaves=6)
_LEAVES = sorted({k.rsplit(".", 1)[-1] for k in all_keys()})
_TOP = [k for k in all_keys() if "." not in k]
_FIELD = _EDGES | _SCALARS  # half the time an edge case
_SCHEMA = st.fixed_dictionaries({}, optional={
    **{k: _FIELD for k in _TOP},
    **{sec: st.dictionaries(st.sampled_from([f.name for f in fields(cls)]), _FIELD, max_size=6)
       for sec, cls in SECTIONS.items()}})
_JUNK = st.dictionaries(st.sampled_from(sorted(SECTIONS) + _LEAVES) | st.integers()
                        | st.text(max_size=4), _VALUES, max_size=4)
_DOC = st.one_of(_SCHEMA, _SCHEMA, _SCHEMA, _JUNK, _VALUES)


def _load(raw) -> Config | None:
    try:
        return absolutize(config_from_dict(raw, "random.yaml"))
    except ConfigError as e:
        assert str(e)
        return None


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(_DOC)
def test_random_dicts_give_a_config_or_a_config_error(raw):
    cfg = _load(raw)
    if cfg is not None:  # what is accepted is really usable downstream
        floats = (cfg.train.lr, cfg.finetune.lr, cfg.data.val_split, cfg.model.dropout,
                  cfg.train.weight_decay, cfg.train.label_smoothing)
        assert all(x is None or math.isfinite(x) for x in floats)  # None: lr auto
        assert cfg.data.val_split is not None and cfg.model.dropout is not None
        assert 0 <= cfg.workers <= 64 and "\0" not in cfg.name + cfg.output + cfg.data.root
        assert config_from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(st.text(max_size=80),
                 _DOC.map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
                 st.lists(st.sampled_from(["train:", "  lr: ", "1e-3", "- ", "[", "{", "&a ",
                                           "*a", "!!int ", "2024-13-45", "\n", ": ", "'"]),
                          max_size=12).map("".join)))
def test_random_yaml_text_gives_a_mapping_or_a_config_error(tmp_path_factory, text):
    path = Path(tmp_path_factory.getbasetemp()) / "random.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        raw = read_yaml(path)
    except ConfigError as e:
        assert "random.yaml" in str(e)
        return
    assert isinstance(raw, dict)
    _load(raw)
