"""Typed options (dataclasses) as command lines and YAML files, through jsonargparse.

The one configuration mechanism of the project: training
(:class:`~so3krates_openmm.training.config.TrainingConfig`) and every MD
protocol (:mod:`so3krates_openmm.md.protocols`) declare their options as
dataclass fields with a ``help`` text (and optionally ``minimum`` and
``input_file``) in the field metadata. :func:`options_parser` turns such a
class into a jsonargparse parser:

- one flag per field, ``--`` + the name with ``_`` -> ``-`` (``timestep_fs`` ->
  ``--timestep-fs``); booleans as ``--minimize`` / ``--no-minimize``; lists as
  ``--data a.npz b.npz``;
- a config-file option (``--config`` or ``--protocol``): a YAML file whose keys are
  the field names; flags override the file, later files override earlier ones;
- unknown keys, values of the wrong type and values below ``minimum`` are errors
  naming the key; ``--help`` shows every default;
- ``input_file`` fields must name existing files; in a file a relative path is
  relative to that file.

:func:`parse_options` returns the dataclass instance and which options were
given (file keys and flags). Errors are :class:`OptionsError` with a one-line
message.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser, Namespace
from jsonargparse.typing import Path_fr, registered_types, restricted_number_type


def option(default: Any, help: str, *, minimum: float | None = None, input_file: bool = False) -> Any:
    """A dataclass field declaring one option: its default (a list default is copied per instance), help text
    (unit included), smallest allowed value and whether it names an input file that must exist."""
    metadata = {"help": help, "minimum": minimum, "input_file": input_file}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


class OptionsError(ValueError):
    """Options that do not fit their declaration (unknown key, wrong type, out of range, missing file)."""


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (Union, types.UnionType)


def _without_none(annotation: Any) -> tuple[Any, bool]:
    """``(X, True)`` for ``Optional[X]``, else ``(annotation, False)``."""
    if _is_union(annotation) and type(None) in typing.get_args(annotation):
        rest = tuple(option for option in typing.get_args(annotation) if option is not type(None))
        # typing.Union takes the tuple of members (``|`` cannot); the type objects built here are what
        # jsonargparse gets and shows in --help and errors, so they keep the typing forms.
        return (rest[0] if len(rest) == 1 else Union[rest]), True  # noqa: UP007
    return annotation, False


def _flag_type(annotation: Any, metadata: dict) -> Any:
    """The jsonargparse type of a field: the annotation, with ``minimum`` and ``input_file`` applied."""
    base, optional = _without_none(annotation)
    if metadata.get("input_file"):
        base = Path_fr
    elif metadata.get("minimum") is not None and base in (int, float):
        base = _at_least(base, metadata["minimum"])
    return Optional[base] if optional else base  # noqa: UP045 (a typing.Union for jsonargparse, as above)


def _at_least(base: type, minimum: float) -> type:
    """jsonargparse's restricted number type ``base >= minimum`` (the registered one if it exists, e.g.
    ``NonNegativeFloat``)."""
    minimum = base(minimum)
    registered = registered_types.get((((">=", minimum),), base, "and"))
    return registered or restricted_number_type(f"{base.__name__}>={minimum}", base, (">=", minimum))


def _list_item(annotation: Any) -> Any:
    """``X`` for ``list[X]`` or ``Optional[list[X]]``, else None."""
    base, _ = _without_none(annotation)
    return typing.get_args(base)[0] if typing.get_origin(base) is list else None


def option_names(cls: type) -> list[str]:
    """The option names of the dataclass ``cls`` (its fields set by ``__init__``)."""
    return [item.name for item in dataclasses.fields(cls) if item.init]


def field_default(item: dataclasses.Field) -> Any:
    """The default value of a dataclass field."""
    if item.default is not dataclasses.MISSING:
        return item.default
    return item.default_factory()  # type: ignore[misc]


def options_parser(
    cls: type,
    *,
    prog: str,
    description: str,
    config_flag: str = "--config",
    config_help: str = "YAML file of options (keys as the flags' names with underscores); flags override it",
    name_key: str | None = None,
) -> ArgumentParser:
    """A parser with one flag per field of the dataclass ``cls`` and a config-file option ``config_flag``.

    ``name_key``: a key files may hold to say which program they are for (e.g. ``protocol: langevin_nvt``);
    a file for another program is an error.
    """
    parser = ArgumentParser(prog=prog, description=description, exit_on_error=False)
    if name_key is not None:
        # Before the config option: a file's key ``protocol`` must match this argument, not ``--protocol``.
        parser.add_argument(f"--{name_key}-name", dest=name_key, type=Optional[typing.Literal[cls.name]],  # noqa: UP045
                            default=None, help=f"the {name_key} a file is written for (checked)")
    parser.add_argument(config_flag, dest="config_files", action=ActionConfigFile, metavar="FILE", help=config_help)
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        if not item.init:
            continue
        flag = "--" + item.name.replace("_", "-")
        default, text = field_default(item), item.metadata.get("help", "")
        annotation = hints[item.name]
        if annotation is bool:
            parser.add_argument(flag, dest=item.name, action=ActionYesNo(no_prefix="no-"), default=default, help=text)
        elif _list_item(annotation) is not None:
            item_type = Path_fr if item.metadata.get("input_file") else _list_item(annotation)
            parser.add_argument(flag, dest=item.name, type=item_type, nargs="+", default=default, help=text)
        else:
            parser.add_argument(flag, dest=item.name, type=_flag_type(annotation, item.metadata), default=default,
                                help=text)
    return parser


def add_switch(parser: ArgumentParser, flag: str, help: str) -> None:
    """A command-line-only on/off flag (``store_true``) that is not an option of the dataclass."""
    parser.add_argument(flag, action="store_true", help=help)


def _one_line(message: str, known: Sequence[str]) -> str:
    """jsonargparse's (often multi-line) message as one line naming the key."""
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
    if not lines:
        return "invalid options"
    unknown = re.match(r"Option '([^']+)' is not accepted", lines[0]) or re.match(
        r"Key '([^']+)' is not expected", lines[0])
    if unknown:
        key = unknown.group(1)
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else "; see --help for the valid keys"
        return f"unknown key {key!r}{hint}"
    unrecognised = re.match(r"unrecognized arguments: (\S+)", lines[0])
    if unrecognised:
        flags = ["--" + name.replace("_", "-") for name in known]
        close = difflib.get_close_matches(unrecognised.group(1).split("=")[0], flags, n=1, cutoff=0.6)
        return " ".join(lines) + (f"; did you mean {close[0]}?" if close else "; see --help")
    match = re.match(r'Parser key "([^"]+)"(?: element \d+)?:\s*(.*)', lines[0])
    if not match:
        return " ".join(lines)
    key, rest = match.groups()
    given = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Given value:")), None)
    reasons = [line[2:] for line in lines[1:] if line.startswith("- ") and "NoneType" not in line]
    if not reasons:
        reasons = [rest] if rest else [line for line in lines[1:] if not line.startswith(("Given value", "Subtypes"))]
    for pattern, replacement in ((r"Not of type Path_fr: ", ""), (r"Expected a <class '(\w+)'>", r"expected \1"),
                                 (r"Expected a typing\.Literal\[(.*)\]", r"expected one of \1")):
        reasons = [re.sub(pattern, replacement, reason) for reason in reasons]
    text = f"{'config file' if key == 'config_files' else f'option {key!r}'}: {'; '.join(dict.fromkeys(reasons))}"
    if given is not None and given.lower() == "none":
        text += " (write null for no value)"
    elif given is not None:
        text += f" (given: {given})"
    if re.search(r"(Got value|Given value): \S*,", str(message)):
        text += (f"; separate several values by spaces on the command line (--{key.replace('_', '-')} 1 2 3), "
                 "write a list in a file")
    return text


def _options_error(error: argparse.ArgumentError, cls: type) -> OptionsError:
    """jsonargparse's error as an :class:`OptionsError` with a one-line message naming the key."""
    names = option_names(cls)
    if re.search(r"does not support item assignment|is not iterable", str(error)):  # one value for a list
        hints = typing.get_type_hints(cls)
        lists = [name for name in names if _list_item(hints[name]) is not None]
        return OptionsError(f"a list option ({', '.join(lists)}) has a single value in a file: write it as a list, "
                            f"e.g. '{lists[0] if lists else 'key'}: [a, b]'")
    return OptionsError(_one_line(str(error), names))


def parse_options(
    parser: ArgumentParser, cls: type, argv: Sequence[str] | None = None
) -> tuple[Any, Namespace, frozenset[str]]:
    """Parse ``argv`` into an instance of the dataclass ``cls``.

    Returns ``(options, namespace, given)``: the options, the whole parsed
    namespace (for switches that are not options) and the names of the options
    given in a file or as a flag. Raises :class:`OptionsError` with a one-line message.
    """
    names = option_names(cls)
    try:
        explicit = parser.parse_args(argv, defaults=False)
        namespace = parser.parse_args(argv)
    except argparse.ArgumentError as error:
        raise _options_error(error, cls) from None
    given = frozenset(name for name in names if name in explicit)
    values = {name: _plain(namespace[name]) for name in names}
    try:
        options = cls(**values)
    except (TypeError, ValueError) as error:
        raise OptionsError(str(error)) from None
    return options, namespace, given


def _plain(value: Any) -> Any:
    """Plain Python values for the dataclass: ``pathlib.Path`` (absolute) for checked input files, ``int`` and
    ``float`` for jsonargparse's restricted numbers."""
    if isinstance(value, Path_fr):
        return Path(value.absolute)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return value


def parse_object(parser: ArgumentParser, cls: type, values: dict[str, Any]) -> Any:
    """An instance of the dataclass ``cls`` from a dict, checked as a config file is (unknown keys, types)."""
    names = option_names(cls)
    try:
        namespace = parser.parse_object(values)
    except argparse.ArgumentError as error:
        raise _options_error(error, cls) from None
    return cls(**{name: _plain(namespace[name]) for name in names})


def flags_given(parser: ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """Names of the options set by flags on the command line (``--flag value`` or ``--flag=value``), not by a file."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    written = {argument.split("=", 1)[0] for argument in arguments if argument.startswith("--")}
    return {action.dest for action in parser._actions if written & set(action.option_strings)}
