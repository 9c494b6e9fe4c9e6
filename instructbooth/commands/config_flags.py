"""Stage configs as flags, the same way for every command.

Every field of a frozen dataclass config becomes `--field-name`; its help is the field's
comment (`config_docs.field_docs`) and default. Booleans take yes/no, and a bare flag means
yes (`--flip`, `--flip no`); optional numbers take `none`; tuples take comma-separated values.
Only the flags given reach the config, so the dataclass keeps the one set of defaults:

    add_config_flags(parser.add_argument_group("RL settings (RLConfig)"), RLConfig)
    config = RLConfig(**given_fields(args, RLConfig))
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Iterable, Mapping

from ..config_docs import field_docs


def add_config_flags(group, config_class: type, skip: Iterable[str] = (), shared: Iterable[type] = (),
                     aliases: Mapping[str, str] | None = None) -> None:
    """A flag per field of `config_class` except `skip`. A field that `shared` configs also have
    gets one flag that sets it in all of them (its help says so). `aliases` maps a field to an
    older flag kept working (`{"lora_rank": "--rank"}`)."""
    hints, docs, defaults = typing.get_type_hints(config_class), field_docs(config_class), config_class()
    skip, shared = set(skip), list(shared)
    for field in dataclasses.fields(config_class):
        if field.name in skip:
            continue
        hint = hints[field.name]
        also = [other.__name__ for other in shared if field.name in getattr(other, "__dataclass_fields__", {})]
        text = docs.get(field.name, "") + (f" (also sets {', '.join(also)}.{field.name})" if also else "")
        text = f"{text} (default {_shown(getattr(defaults, field.name))})".replace("%", "%%")
        options: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS, "help": text.strip()}
        if hint is bool:
            options.update(nargs="?", const=True, type=parse_yes_no, metavar="yes|no")
        else:
            options.update(type=value_parser(hint), metavar=_metavar(hint))
        flags = ["--" + field.name.replace("_", "-"), *([aliases[field.name]] if field.name in (aliases or {}) else [])]
        group.add_argument(*flags, **options)


def given_fields(args: argparse.Namespace, config_class: type) -> dict[str, Any]:
    """The fields of `config_class` whose flags were given."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(config_class) if hasattr(args, f.name)}


def value_parser(hint):
    """A parser of one flag value for a field's type: int, float, str, `X | None`, tuples."""
    origin, parts = typing.get_origin(hint), [a for a in typing.get_args(hint) if a is not type(None)]
    if origin is tuple:
        kind = parts[0] if parts else str
        return lambda value: tuple(kind(part.strip()) for part in value.split(",") if part.strip())
    if type(None) in typing.get_args(hint):
        base = value_parser(parts[0])
        return lambda value: None if value.strip().lower() == "none" else base(value)
    return hint if hint in (int, float, str) else str


def parse_yes_no(value: str) -> bool:
    if value.lower() in ("yes", "true", "1", "on"):
        return True
    if value.lower() in ("no", "false", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected yes or no, got {value!r}")


def _metavar(hint) -> str | None:
    if typing.get_origin(hint) is tuple:
        return "A,B,..."
    return "N|none" if type(None) in typing.get_args(hint) else None


def _shown(value) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "none"
    return repr(value) if isinstance(value, str) else str(value)
