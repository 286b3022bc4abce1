"""The YAML config loader both command-line tools use: read a file (errors name it), parse
``key=value`` overrides, and merge layers over a dataclass schema (OmegaConf structured
configs), so an unknown key or a wrongly typed value fails at load time with the valid names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Type, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from common.errors import UserError

T = TypeVar("T")
# OmegaConf's message for a value outside a Literal (or Enum) type.
_CHOICE = re.compile(r"^Invalid value '(.*)', expected one of \[(.*)\]$")


def read_yaml(path: str | Path) -> DictConfig:
    """Load one YAML file; a missing or unparsable file is a UserError naming it."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        cfg = OmegaConf.load(p)
    except Exception as e:  # yaml.YAMLError and friends: say which file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot parse {p}: {first}") from None
    if not isinstance(cfg, DictConfig):
        raise UserError(f"{p} must hold a mapping of config keys at the top level")
    return cfg


def parse_overrides(pairs: Iterable[str]) -> DictConfig:
    """``["a.b=1", "c=x"]`` → a nested DictConfig. A malformed pair is a UserError."""
    pairs = list(pairs)
    for p in pairs:
        if "=" not in p or p.startswith("="):
            raise UserError(f"override {p!r} must look like key=value (e.g. corpus=PATH)")
    try:
        return OmegaConf.from_dotlist(pairs)
    except OmegaConfBaseException as e:
        raise UserError(f"bad override: {_first_line(e)}") from None


def merge_into(schema: Type[T], *layers: Any, where: str = "config") -> T:
    """Merge ``layers`` (DictConfigs or dicts) over the defaults of dataclass ``schema``.

    Returns a typed, read-only-by-convention DictConfig that duck-types as ``schema``.
    Raises UserError naming the unknown key and the valid names at that level, or the key
    whose value has the wrong type.
    """
    base = OmegaConf.structured(schema)
    try:
        merged = OmegaConf.merge(base, *layers)
    except (ConfigKeyError, ValidationError, OmegaConfBaseException) as e:
        raise UserError(_explain(e, base, where)) from None
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        raise UserError(f"{where}: required key(s) not set: {', '.join(missing)}")
    return merged  # type: ignore[return-value]


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
