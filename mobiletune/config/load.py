"""Typed, frozen configuration loaded strictly from YAML (the keys: schema.py).

Unknown keys, wrong types and out-of-range values raise ConfigError naming the key, where
it came from (the file or the command line) and the closest valid key. No torch import
here: the CLI's `--help` must stay instant.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Collection

import yaml

from mobiletune.config.schema import (
    NUM_BLOCKS,
    SECTIONS,
    Config,
    all_keys,
)
from mobiletune.errors import ConfigError


def _suggest(full: str) -> str:
    """' Did you mean ...?' for a mistyped dotted key, or '' when nothing is close."""
    candidates = all_keys() + list(SECTIONS)
    last = full.rsplit(".", 1)[-1]
    names: dict[str, str] = {}
    for k in all_keys():  # first section wins: `lr` suggests train.lr before finetune.lr
        names.setdefault(k.rsplit(".", 1)[-1], k)
    if last in names:  # the right key in the wrong section: `lr` under data -> train.lr
        return f" Did you mean '{names[last]}'?"
    close = difflib.get_close_matches(full, candidates, n=1, cutoff=0.6)
    if not close:
        near = difflib.get_close_matches(last, list(names), n=1, cutoff=0.6)
        close = [names[near[0]]] if near else []
    return f" Did you mean '{close[0]}'?" if close else ""


def _coerce(value: Any, f: dataclasses.Field, key: str, source: str) -> Any:
    """Check one value against its field's type and range; return it in the field's type."""
    meta, kind = f.metadata, f.metadata.get("kind") or f.type
    kind = {"int": int, "float": float, "bool": bool, "str": str}.get(kind, kind)
    where = f"'{key}' in {source}"
    if meta.get("auto") and (value is None or value == "auto"):
        return None
    if kind is float and isinstance(value, str):
        try:  # YAML 1.1 reads `1e-5` (no dot) as a string; users mean a number
            value = float(value)
        except ValueError:
            pass
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    ok = (isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))) or (
        kind is float and isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        auto = meta.get("auto")
        hint = " Did you mean 'auto'?" if auto and isinstance(value, str) and \
            difflib.get_close_matches(value.lower(), ["auto"], cutoff=0.6) else ""
        raise ConfigError(f"{where} must be {kind.__name__}{' or auto' if auto else ''}, got "
                          f"{value!r} ({type(value).__name__}).{hint}", key=key, value=value,
                          source=source)
    if kind is float:
        value = float(value)
        if not math.isfinite(value):  # NaN passes every range check below
            raise ConfigError(f"{where} must be a finite number, got {value!r}.", key=key,
                              value=value, source=source)
    if kind is str and "\0" in value:  # a NUL byte breaks every path and file name later
        raise ConfigError(f"{where} contains a NUL character.", key=key, value=value,
                          source=source)
    choices = meta.get("choices")
    if choices and value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{where} is {value!r}; choose one of {', '.join(choices)}.{hint}",
                          key=key, value=value, choices=choices, source=source)
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value < lo or (meta["lo_open"] and value == lo)) or (
            hi is not None and (value > hi or (meta["hi_open"] and value == hi))):
        lb = "(" if meta["lo_open"] else "["
        rb = ")" if meta["hi_open"] else "]"
        raise ConfigError(f"{where} is {value!r}, outside the valid range {lb}{lo}, {hi}{rb}.",
                          key=key, value=value, choices=(lo, hi), source=source)
    return value


def _source(key: str, source: str, cli: Collection[str]) -> str:
    """Where a key's value came from: the command line for overridden keys, else `source`."""
    return "the command line" if key in cli else source


def _build(cls: type, raw: Any, prefix: str, source: str, cli: Collection[str] = ()) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"'{prefix.rstrip('.') or 'the config'}' in {source} must be a mapping "
                          f"of keys, got {type(raw).__name__}.", key=prefix.rstrip("."),
                          value=raw, source=source)
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in known:
            raise ConfigError(f"Unknown key '{prefix}{name}' in {source}.{_suggest(prefix + str(name))}",
                              key=f"{prefix}{name}", value=value, choices=all_keys(), source=source)
        if name in SECTIONS and cls is Config:
            values[name] = _build(SECTIONS[name], value, f"{name}.", source, cli)
        elif name == "parent":
            values[name] = None if value is None else str(value)
        else:
            key = f"{prefix}{name}"
            values[name] = _coerce(value, known[name], key, _source(key, source, cli))
    return cls(**values)


def _check_cross(cfg: Config, source: str, cli: Collection[str] = ()) -> Config:
    """Checks that span keys: workers syntax, unfreeze within the arch's blocks, name."""
    w = cfg.data.workers
    src = _source("data.workers", source, cli)
    if w != "auto" and not (w.isascii() and w.isdigit() and int(w) <= 64):  # not '²'
        raise ConfigError(f"'data.workers' in {src} is {w!r}; use auto or a number 0-64.",
                          key="data.workers", value=w, choices=("auto", "0-64"), source=src)
    blocks = NUM_BLOCKS[cfg.model.arch]
    if not 0 <= cfg.finetune.unfreeze <= blocks:
        src = _source("finetune.unfreeze", source, cli)
        raise ConfigError(f"'finetune.unfreeze' in {src} is {cfg.finetune.unfreeze}, but "
                          f"{cfg.model.arch} has {blocks} blocks: use 1-{blocks} (0 = no "
                          "finetune stage).",
                          key="finetune.unfreeze", value=cfg.finetune.unfreeze,
                          choices=(0, blocks), source=src)
    # `latest` is the symlink to the newest run, so it cannot be a run's own name
    if not cfg.name or "/" in cfg.name or cfg.name in (".", "..", "latest"):
        src = _source("name", source, cli)
        raise ConfigError(f"'name' in {src} is {cfg.name!r}; use a plain folder name "
                          "(not latest).", key="name", value=cfg.name, source=src)
    return cfg


def config_from_dict(raw: Any, source: str = "the config", cli: Collection[str] = ()) -> Config:
    """Validate a plain dict (from YAML or a checkpoint) into a Config; errors in the keys
    named by `cli` (overrides) say they came from the command line."""
    return _check_cross(_build(Config, raw, "", source, cli), source, cli)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; missing, empty or malformed files raise ConfigError."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"Config file {p} is a folder; pass a YAML file with --config.",
                          key="--config", value=str(p))
    if not p.is_file():
        raise ConfigError(f"Config file {p} not found. Pass an existing YAML file with --config "
                          "(see configs/cats.yaml for every key).", key="--config", value=str(p))
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as e:  # permission denied, I/O error
        raise ConfigError(f"Config file {p} cannot be read: {e.strerror or e}.", key="--config",
                          value=str(p), source=str(p)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{p} is not valid YAML{where}: {problem}.", value=str(p),
                          source=str(p)) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p} is not a UTF-8 text file.", value=str(p), source=str(p)) from None
    except Exception as e:  # noqa: BLE001 - safe_load runs no user code; any failure is the text's
        # PyYAML's constructors raise plain ValueError, IndexError, ... for `2024-13-45`,
        # `!!int`, and RecursionError for very deep nesting
        raise ConfigError(f"{p} is not valid YAML: a value cannot be read ({type(e).__name__}: "
                          f"{str(e)[:120]}). Quote dates and tagged values.", value=str(p),
                          source=str(p)) from None
    if raw is None:
        raise ConfigError(f"{p} is empty; it needs at least data.root (see configs/cats.yaml).",
                          value=str(p), source=str(p))
    if not isinstance(raw, dict):
        raise ConfigError(f"{p} must hold a mapping of keys, not a {type(raw).__name__}.",
                          value=raw, source=str(p))
    return raw


def parse_override(item: str) -> tuple[str, Any]:
    """`section.key=value` -> (key, value parsed as YAML), for `--set`."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item!r} must look like section.key=value "
                          "(for example --set train.lr=1e-4).", key="--set", value=item)
    if key in SECTIONS:
        example = next(k for k in all_keys() if k.startswith(key + "."))
        raise ConfigError(f"--set names the section '{key}', not a key; set one of its keys, "
                          f"for example --set {example}=...", key=key, value=item,
                          choices=all_keys())
    if key not in all_keys():
        raise ConfigError(f"--set names unknown key '{key}'.{_suggest(key)}",
                          key=key, value=item, choices=all_keys())
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except Exception:  # noqa: BLE001 - as in read_yaml
        value = text  # not YAML (`2024-13-45`): the key's type check has the last word
    return key, value


def apply_overrides(raw: dict[str, Any], overrides: list[tuple[str, Any]]) -> dict[str, Any]:
    """Return a copy of `raw` with each dotted override set (unknown keys are errors)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    valid = set(all_keys())
    for key, value in overrides:
        if key not in valid:
            raise ConfigError(f"Unknown override '{key}'.{_suggest(key)}",
                              key=key, value=value, choices=sorted(valid))
        if "." in key:
            section, name = key.split(".", 1)
            node = out.get(section)
            if node is not None and not isinstance(node, dict):
                continue  # `data: pics` stays, so that config_from_dict reports it
            out[section] = dict(node) if isinstance(node, dict) else {}
            out[section][name] = value
        else:
            out[key] = value
    return out


def absolutize(cfg: Config, base: Path | None = None) -> Config:
    """Make data, output and weights paths absolute, so a stored config works from anywhere."""
    base = base or Path.cwd()

    def absp(p: str, key: str) -> str:
        try:
            return str((base / Path(p).expanduser()).resolve())
        except (RuntimeError, OSError) as e:  # `~nobody/x`, a symlink loop
            raise ConfigError(f"'{key}' is {p!r}, which is not a usable path ({e}).",
                              key=key, value=p) from None

    weights = cfg.model.weights
    if weights not in ("imagenet", "none"):
        weights = absp(weights, "model.weights")
    labels = absp(cfg.data.labels, "data.labels") if cfg.data.labels else ""
    return replace(cfg, output=absp(cfg.output, "output"),
                   data=replace(cfg.data, root=absp(cfg.data.root, "data.root"), labels=labels),
                   model=replace(cfg.model, weights=weights))


def load_config(path: str | Path | None, overrides: list[tuple[str, Any]] = ()) -> Config:
    """Load a YAML config file (or defaults when `path` is None), apply overrides, validate."""
    raw = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "the command line"
    overrides = list(overrides)
    cli = {k for k, _ in overrides}
    return absolutize(config_from_dict(apply_overrides(raw, overrides), source, cli))


def dump_yaml(cfg: Config) -> str:
    """The resolved config as YAML text, keys in declaration order; a key left to the run
    (None) reads `auto`, as the user wrote it, and loads back as the same config."""
    data = cfg.to_dict()
    for section in fields(cfg):
        value = getattr(cfg, section.name)
        if not dataclasses.is_dataclass(value):
            continue
        for f in fields(value):
            if f.metadata.get("auto") and getattr(value, f.name) is None:
                data[section.name][f.name] = "auto"
    return yaml.safe_dump(data, sort_keys=False)
