"""Reading configs: YAML files (the shipped ones by name), ``key=value`` overrides, and plugin modules.

Duplicate keys in a YAML mapping are an error (YAML would keep the last silently). An override of a top-level
key that a learner sets for itself (``steps=20000`` when T-BPTT has its own ``steps``) changes nothing for that
learner: it is reported as a :class:`~online_rnn.experiment.schema.ConfigWarning` naming both places.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable

import yaml

from online_rnn.experiment.schema import ConfigError, ConfigWarning



class _Loader(yaml.SafeLoader):
    """PyYAML reads ``1e-3`` as a string (YAML 1.1 wants ``1.0e-3``): this loader reads it as a float; and a
    mapping with a repeated key is an error."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                mark = key_node.start_mark
                raise ConfigError(f"{self.name}: duplicate key {key!r} at line {mark.line + 1} (first at line "
                                  f"{seen[key] + 1}); a key may appear once in a mapping")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _first, _resolvers in _Loader.yaml_implicit_resolvers.items():
    _resolvers[:] = [(tag, rx) for tag, rx in _resolvers if tag != "tag:yaml.org,2002:float"]
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _Loader.construct_mapping)


def parse_yaml(text: str, what: str = "config") -> Any:
    loader = _Loader(text)
    loader.name = what
    try:
        return loader.get_single_data()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{what}: invalid YAML{where}: {problem}") from None
    finally:
        loader.dispose()


def load(path: str | Path, overrides: Iterable[str] = ()) -> dict:
    """Read a YAML config and apply ``key=value`` overrides (see :func:`apply_override`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    raw = _unalias(parse_yaml(path.read_text(), str(path)))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config is a mapping of keys (name, env, learners, ...), got {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    for item in overrides:
        key = apply_override(raw, item)
        _warn_if_shadowed(raw, key, item)
    return raw


def _unalias(node: Any) -> Any:
    """A copy in which no two places share an object (YAML anchors and aliases share one), so that an override
    of one learner's setting does not change the others'."""
    if isinstance(node, dict):
        return {k: _unalias(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_unalias(v) for v in node]
    return node


def apply_override(config: dict, item: str) -> list[str]:
    """Apply one ``dotted.key=value`` override in place and return the key's parts. The value is parsed as YAML
    (``1e-3``, ``[1, 2]``, ``true``, ``null``). List entries are addressed by index or, for ``learners``, by label
    or name: ``learners.0.n_columns=5`` or ``learners.columnar.n_columns=5``."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. steps=1000 or env.variant=ccn")
    key, text = item.split("=", 1)
    parts = key.strip().split(".")
    if not key.strip() or any(not p for p in parts):
        raise ConfigError(f"override {item!r}: empty key")
    value = parse_yaml(text, f"override {key}")
    node: Any = config
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            index = _list_index(node, part, ".".join(parts[:depth]))
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise ConfigError(f"override {item!r}: {where} is inside a {type(node).__name__}, not a mapping or list")
    return parts


def _warn_if_shadowed(config: dict, parts: list[str], item: str) -> None:
    """An override of a top-level key (``steps``, ``sweep.learning_rate``) that learners set for themselves."""
    if parts[0] not in ("steps", "sweep") or not isinstance(config.get("learners"), list):
        return
    shadowed = []
    for i, entry in enumerate(config["learners"]):
        node: Any = entry
        for part in parts:
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            label = entry.get("label", entry.get("name", i)) if isinstance(entry, dict) else i
            shadowed.append(f"learners.{label}.{'.'.join(parts)}={node}")
    if shadowed:
        more = f" and {len(shadowed) - 1} more" if len(shadowed) > 1 else ""
        warnings.warn(ConfigWarning(
            f"override {item} does not reach learners that set it themselves: {shadowed[0]}{more} (override those "
            f"too, e.g. learners.LABEL.{'.'.join(parts)}=..., or scale every run with budget=...)"), stacklevel=3)


def _list_index(items: list, part: str, path: str) -> int:
    if re.fullmatch(r"-?\d+", part):
        index = int(part)
        if not -len(items) <= index < len(items):
            raise ConfigError(f"override {path}.{part}: index out of range ({len(items)} entries)")
        return index
    labels = [it.get("label", it.get("name")) if isinstance(it, dict) else None for it in items]
    if part in labels:
        return labels.index(part)
    names = [it.get("name") if isinstance(it, dict) else None for it in items]
    if names.count(part) == 1:
        return names.index(part)
    choices = [str(x) for x in labels if x is not None]
    near = difflib.get_close_matches(part, choices, n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    raise ConfigError(f"override {path}.{part}: no entry with that label or index{hint} labels: {', '.join(choices)}")


# ------------------------------------------------------------------------------------------------- plugins


def import_plugins(modules: Iterable[str], where: str = "plugins") -> tuple[str, ...]:
    """Import modules that register learners, streams, cells, objectives or optimizers (a path to a ``.py`` file
    works too). Errors are one line naming the module."""
    done = []
    for name in modules:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: expected module names, got {name!r}")
        try:
            if name.endswith(".py"):
                path = Path(name).resolve()
                if any(getattr(m, "__file__", None) and Path(m.__file__).resolve() == path
                       for m in list(sys.modules.values())):
                    done.append(name)  # imported already (by name or by path): its registrations stand
                    continue
                spec = importlib.util.spec_from_file_location(path.stem, path)
                if spec is None or not path.is_file():
                    raise ModuleNotFoundError(f"no file {path}")
                module = importlib.util.module_from_spec(spec)
                sys.modules[path.stem] = module
                spec.loader.exec_module(module)
            else:
                importlib.import_module(name)
        except Exception as err:  # noqa: BLE001  (a plugin may fail in any way: one line)
            raise ConfigError(f"{where}: cannot import {name!r}: {type(err).__name__}: {err}") from None
        done.append(name)
    return tuple(done)


# ------------------------------------------------------------------------------------------- shipped configs


def config_dirs() -> list[Path]:
    """Where configs are looked up by name: ./configs, then the configs shipped with the package (installed as
    ``online_rnn/configs``; in a source checkout, its top-level ``configs``)."""
    package = Path(__file__).resolve().parent.parent
    dirs = [Path.cwd() / "configs"]
    for shipped in (package / "configs", package.parent / "configs"):
        if shipped.is_dir() and any(shipped.glob("*.yaml")):
            dirs.append(shipped)
            break
    unique: list[Path] = []
    for d in dirs:
        if d.is_dir() and all(d.resolve() != u.resolve() for u in unique):
            unique.append(d)
    return unique


def find_config(name: str) -> Path:
    """A config by path, or by name (``demo``, ``trace_patterning``) in :func:`config_dirs`."""
    path = Path(name)
    if path.is_file():
        return path
    for folder in config_dirs():
        for candidate in (folder / name, folder / f"{name}.yaml", folder / f"{name}.yml"):
            if candidate.is_file():
                return candidate
    known = sorted({p.stem for d in config_dirs() for p in d.glob("*.y*ml")})
    hint = f"; configs found: {', '.join(known)}" if known else ""
    raise FileNotFoundError(f"config not found: {name}{hint}")
