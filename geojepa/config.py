"""Typed run settings: dataclasses <-> YAML files <-> command-line flags."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from geojepa.errors import GeoJepaError

T = TypeVar("T")


def _base_type(annotation: Any) -> tuple[type, bool]:
    """The scalar type behind an annotation, and whether None is allowed."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])[0], True
    if origin is typing.Literal:
        return type(typing.get_args(annotation)[0]), False
    return annotation, False


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _converter(kind: type, optional: bool) -> Any:
    base = {bool: _parse_bool, int: int, float: float, str: str}.get(kind, str)
    if not optional:
        return base

    def convert(text: str) -> Any:
        return None if text.lower() in ("none", "null", "") else base(text)

    return convert


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, prefix: str = "", skip: tuple[str, ...] = ()) -> None:
    """Add one ``--flag`` per field of a dataclass of scalars (defaults are left as None).

    The flag of field ``batch_size`` is ``--batch-size`` (``--{prefix}batch-size`` with a
    prefix); a bool field takes ``true``/``false``. The field's docstring line in the class's
    ``Attributes:`` section becomes the help text.
    """
    hints = typing.get_type_hints(cls)
    docs = _attribute_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind, optional = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        parser.add_argument(
            f"--{prefix}{f.name.replace('_', '-')}",
            dest=f"{prefix.replace('-', '_')}{f.name}",
            type=_converter(kind, optional),
            default=None,
            metavar=kind.__name__.upper(),
            help=f"{docs.get(f.name, '')} (default {default})".strip(),
        )


def overrides_from_args(args: argparse.Namespace, cls: type, prefix: str = "") -> dict[str, Any]:
    """The dataclass fields given on the command line."""
    out = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f"{prefix.replace('-', '_')}{f.name}", None)
        if value is not None:
            out[f.name] = value
    return out


def build(cls: type[T], values: dict[str, Any], source: str) -> T:
    """Instantiate a dataclass from a dict, with a clear error for unknown or mistyped keys."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise GeoJepaError(f"unknown setting(s) {', '.join(unknown)}", source)
    hints = typing.get_type_hints(cls)
    clean = {}
    for key, value in values.items():
        kind, optional = _base_type(hints[key])
        if value is None and optional:
            clean[key] = None
        elif kind in (int, float, str, bool) and not isinstance(value, kind):
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                clean[key] = float(value)
            else:
                raise GeoJepaError(f"setting {key} must be {kind.__name__}, got {value!r}", source)
        else:
            clean[key] = tuple(value) if isinstance(value, list) else value
    return cls(**clean)


def save_yaml(path: Path, sections: dict[str, Any]) -> None:
    """Write dataclasses (or dicts) as YAML sections, atomically."""
    data = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in sections.items()}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(_plain(data), sort_keys=False))
    tmp.replace(path)


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML settings file.

    Raises:
        GeoJepaError: The file is missing or not a YAML mapping.
    """
    if not path.is_file():
        raise GeoJepaError("config file not found", path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise GeoJepaError(f"invalid YAML ({err})".replace("\n", " "), path) from err
    if not isinstance(data, dict):
        raise GeoJepaError("config must be a YAML mapping", path)
    return data


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _attribute_docs(cls: type) -> dict[str, str]:
    """Parse ``name: text`` lines of the ``Attributes:`` section of a class docstring."""
    docs: dict[str, str] = {}
    lines = (cls.__doc__ or "").splitlines()
    inside = False
    current = None
    for line in lines:
        stripped = line.strip()
        if stripped == "Attributes:":
            inside = True
            continue
        if not inside:
            continue
        if stripped and not line.startswith(" " * 8) and stripped.endswith(":"):
            break
        if ":" in stripped and line.startswith(" " * 8) and not line.startswith(" " * 12):
            current, text = stripped.split(":", 1)
            docs[current.strip()] = text.strip()
        elif current and stripped:
            docs[current] += " " + stripped
    return docs
