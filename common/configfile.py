"""The YAML config loader both command-line tools use: read a file (errors name it), parse
``key=value`` overrides, and merge layers over a dataclass schema (OmegaConf structured
configs), so an unknown key or a wrongly typed value fails at load time with the valid names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Type, TypeVar

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    ConfigKeyError,
    InterpolationResolutionError,
    OmegaConfBaseException,
    ValidationError,
)

from common.errors import UserError

T = TypeVar("T")
# OmegaConf's message for a value outside a Literal (or Enum) type.
_CHOICE = re.compile(r"^Invalid value '(.*)', expected one of \[(.*)\]$")


def read_yaml(path: str | Path) -> DictConfig:
    """Load one YAML file; a missing or unparsable file is a UserError naming it.

    A YAML syntax error names ``file:line:column`` (1-based, where the parser stopped) and
    the parser's reason, e.g. ``configs/x.yaml:3:9: YAML syntax error: mapping values are
    not allowed here``.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        cfg = OmegaConf.load(p)
    except yaml.MarkedYAMLError as e:
        raise UserError(f"{p}:{yaml_error_location(e)}YAML syntax error: {yaml_error_reason(e)}") from None
    except Exception as e:  # a non-UTF-8 file, a tag OmegaConf refuses, ...: say which file
        raise UserError(f"cannot parse {p}: {_first_line(e)}") from None
    if not isinstance(cfg, DictConfig):
        raise UserError(f"{p} must hold a mapping of config keys at the top level")
    return cfg


def yaml_error_location(e: yaml.MarkedYAMLError) -> str:
    """``"line:column: "`` (1-based) of a YAML error, or ``""`` if PyYAML gave no position."""
    mark = e.problem_mark or e.context_mark
    return f"{mark.line + 1}:{mark.column + 1}: " if mark is not None else ""


def yaml_error_reason(e: yaml.MarkedYAMLError) -> str:
    """PyYAML's reason in one line, with the context it names (e.g. "while parsing a flow
    sequence: expected ',' or ']', but got '<stream end>'")."""
    parts = [x.strip() for x in (e.context, e.problem) if x]
    return ": ".join(parts) or type(e).__name__


def parse_overrides(pairs: Iterable[str]) -> DictConfig:
    """``["a.b=1", "c=x"]`` → a nested DictConfig. A malformed pair is a UserError."""
    pairs = list(pairs)
    for p in pairs:
        if "=" not in p or p.startswith("="):
            raise UserError(f"override {p!r} must look like key=value (e.g. corpus=PATH)")
    try:
        return OmegaConf.from_dotlist(pairs)
    except (yaml.YAMLError, OmegaConfBaseException):
        pass
    for pair in pairs:  # name the pair that fails
        try:
            OmegaConf.from_dotlist([pair])
        except yaml.MarkedYAMLError as e:
            raise UserError(
                f"override {pair!r}: its value is not valid YAML ({yaml_error_reason(e)}); "
                "quote a plain string, e.g. key='\"text\"'"
            ) from None
        except (yaml.YAMLError, OmegaConfBaseException) as e:
            raise UserError(f"override {pair!r}: {_first_line(e)}") from None
    raise UserError(f"overrides {' '.join(pairs)} do not combine (one key set as both a value and a section?)")


def merge_into(schema: Type[T], *layers: Any, where: str = "config") -> T:
    """Merge ``layers`` (DictConfigs or dicts) over the defaults of dataclass ``schema``.

    Returns a typed, read-only-by-convention DictConfig that duck-types as ``schema``.
    Interpolations (``${...}``) stay in place but are all resolved once here, so a
    reference to a key that does not exist, a malformed ``${``, or a value that resolves to
    the wrong type fails now rather than wherever the key is first read.
    Raises UserError naming the unknown key and the valid names at that level, the key
    whose value has the wrong type, or the key whose interpolation does not resolve.
    """
    base = OmegaConf.structured(schema)
    try:
        merged = OmegaConf.merge(base, *layers)
    except (ConfigKeyError, ValidationError, OmegaConfBaseException) as e:
        raise UserError(_explain(e, base, where)) from None
    check_interpolations(merged, where)
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        raise UserError(f"{where}: required key(s) not set: {', '.join(missing)}")
    return merged  # type: ignore[return-value]


def check_interpolations(cfg: DictConfig, where: str = "config") -> None:
    """Resolve every ``${...}`` in ``cfg`` (without changing it). Raises UserError naming
    the key, its text and why it does not resolve, e.g. ``run config: train.seed='${nope}'
    does not resolve: interpolation key 'nope' not found``."""
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except (InterpolationResolutionError, OmegaConfBaseException) as e:
        key = getattr(e, "full_key", None) or "?"
        raw = _raw_value(cfg, key)
        text = f"={raw!r}" if raw is not None else ""
        reason = _first_line(e)
        reason = reason[:1].lower() + reason[1:]
        raise UserError(f"{where}: {key}{text} does not resolve: {reason}; fix or remove the ${{...}} reference") from None


def _raw_value(cfg: DictConfig, key: str) -> Any:
    """The unresolved text of ``key`` (dotted, list indices as ``[i]``), or None."""
    node: Any = cfg
    for part in key.replace("[", ".").replace("]", "").split("."):
        try:
            if isinstance(node, ListConfig):
                node = node._get_node(int(part))
            elif isinstance(node, DictConfig):
                node = node._get_node(part)
            else:
                return None
        except (ValueError, KeyError, IndexError, OmegaConfBaseException):
            return None
        if node is None:
            return None
    try:
        return node._value() if not isinstance(node, (DictConfig, ListConfig)) else None
    except Exception:
        return None


def _explain(e: OmegaConfBaseException, base: DictConfig, where: str) -> str:
    key = getattr(e, "full_key", None) or ""
    if isinstance(e, ConfigKeyError) or "Key '" in str(e) and "not in" in str(e):
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        node = OmegaConf.select(base, parent) if parent else base
        valid = ", ".join(sorted(node.keys())) if isinstance(node, DictConfig) else "?"
        return f"{where}: unknown key '{key}'; valid keys{' under ' + parent if parent else ''}: {valid}"
    choice = _CHOICE.match(_first_line(e))
    if choice:  # a Literal-typed key: say it the way every other choice error does
        value, valid = choice.groups()
        names = ", ".join(v.strip().strip("'\"") for v in valid.split(","))
        return f"{where}: {key}={value!r} is not one of: {names}"
    return f"{where}: bad value for '{key}': {_first_line(e)}"


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__
