"""Protocol files (YAML) and command-line flags, checked against a schema per protocol.

A protocol is described by a :class:`ProtocolSchema`: a list of
:class:`Parameter` s with type, default, whether required, allowed choices
and, for files, whether they must exist. One schema gives both

- the command-line parser (``--temperature 300``, ``--no-minimize``, ...; a
  key ``timestep_fs`` is the flag ``--timestep-fs``), and
- the checks of a protocol file given with ``--protocol FILE``.

Values are taken from the schema defaults, then the protocol file, then the
flags given on the command line (flags win). Relative paths in a protocol file
are relative to that file. Errors name the file and key: an unknown key
suggests the closest valid one, a wrong type says what was expected, a missing
structure or model file says which key pointed to it.
"""

from __future__ import annotations

import argparse
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"
PRETRAINED_SYSTEMS = ("ac_ala3_nhme", "buckyball_catcher")


class ProtocolError(ValueError):
    """A protocol file or command line that does not fit the protocol's schema."""


@dataclass(frozen=True)
class Parameter:
    """One key of a protocol.

    Attributes:
        name: key in the protocol file; the flag is ``--`` + name with ``_`` -> ``-``.
        type: ``int``, ``float``, ``bool``, ``str`` or ``Path``.
        default: value when neither file nor flag gives one (``None``: unset).
        help: description, with the unit.
        required: must be given (file or flag) unless it has a default.
        choices: allowed values.
        must_exist: for ``Path``: the file must exist.
        minimum: smallest allowed value for numbers.
        input_file: for ``Path``: a relative path in a protocol file is relative to that
            file (inputs such as structures); otherwise (outputs) to the working directory.
        metavar: placeholder in ``--help`` (default: the key in capitals).
    """

    name: str
    type: type
    default: Any = None
    help: str = ""
    required: bool = False
    choices: Optional[tuple] = None
    must_exist: bool = False
    minimum: Optional[float] = None
    input_file: bool = True
    metavar: Optional[str] = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", Path: "a file path"}


def _coerce(parameter: Parameter, value: Any, where: str) -> Any:
    """Check the type of a value from a protocol file and convert it (int -> float, str -> Path)."""
    if value is None:
        if parameter.required:
            raise ProtocolError(f"{where}: key {parameter.name!r} is required and may not be empty")
        return None
    expected = parameter.type
    ok = (
        (expected is bool and isinstance(value, bool))
        or (expected is int and isinstance(value, int) and not isinstance(value, bool))
        or (expected is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (expected in (str, Path) and isinstance(value, str))
    )
    if not ok:
        raise ProtocolError(
            f"{where}: key {parameter.name!r} must be {_TYPE_NAMES[expected]}, "
            f"got {value!r} ({type(value).__name__})"
        )
    value = expected(value)
    _check_range(parameter, value, where)
    return value


def _check_range(parameter: Parameter, value: Any, where: str) -> None:
    if parameter.choices is not None and value not in parameter.choices:
        raise ProtocolError(
            f"{where}: key {parameter.name!r} must be one of {', '.join(map(str, parameter.choices))}; got {value!r}"
        )
    if parameter.minimum is not None and value < parameter.minimum:
        raise ProtocolError(f"{where}: key {parameter.name!r} must be at least {parameter.minimum}, got {value!r}")


@dataclass
class ProtocolSchema:
    """The parameters of one protocol; builds its parser and reads its files."""

    name: str
    description: str
    parameters: list[Parameter] = field(default_factory=list)

    def __post_init__(self) -> None:
        names = [p.name for p in self.parameters]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise ValueError(f"schema {self.name}: duplicate parameters {sorted(duplicates)}")
        self._by_name = {p.name: p for p in self.parameters}

    def __getitem__(self, name: str) -> Parameter:
        return self._by_name[name]

    @property
    def keys(self) -> list[str]:
        return list(self._by_name)

    def parser(self) -> argparse.ArgumentParser:
        """Command-line parser: one flag per parameter plus ``--protocol FILE``.

        Flags have no argparse defaults, so that only the flags actually given
        override the protocol file.
        """
        parser = argparse.ArgumentParser(
            prog=self.name,
            description=self.description,
            argument_default=argparse.SUPPRESS,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        parser.add_argument("--protocol", type=Path, metavar="FILE", help="YAML protocol file; flags override its values")
        for p in self.parameters:
            text = p.help + (f" (default: {p.default})" if p.default is not None else "")
            if p.type is bool:
                parser.add_argument(p.flag, dest=p.name, action=argparse.BooleanOptionalAction, help=text)
            else:
                parser.add_argument(
                    p.flag, dest=p.name, type=p.type, choices=p.choices, help=text,
                    metavar=(p.metavar or p.name.upper()) if p.choices is None else None,
                )
        return parser

    def read_file(self, path: str | Path) -> dict[str, Any]:
        """Values of a protocol file, checked (unknown keys, types, ranges); paths made absolute."""
        path = Path(path)
        if not path.is_file():
            raise ProtocolError(f"protocol file {str(path)!r} does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise ProtocolError(f"{path}: not valid YAML: {error}") from error
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ProtocolError(f"{path}: a protocol file must be a mapping of keys to values, got {type(data).__name__}")
        declared = data.pop("protocol", None)
        if declared is not None and declared != self.name:
            raise ProtocolError(f"{path}: this file is for protocol {declared!r}, not {self.name!r}")
        values = {}
        for key, value in data.items():
            if key not in self._by_name:
                close = difflib.get_close_matches(str(key), self.keys, n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(self.keys)}"
                raise ProtocolError(f"{path}: unknown key {key!r} for protocol {self.name}{hint}")
            parameter = self._by_name[key]
            value = _coerce(parameter, value, str(path))
            if parameter.type is Path and parameter.input_file and value is not None and not value.is_absolute():
                value = (path.parent / value).resolve()
            values[key] = value
        return values

    def resolve(self, argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
        """Parse ``argv`` and merge defaults < protocol file < flags; check required keys and files.

        The result maps every parameter name to its value and records where
        each value came from under ``"_source"`` (for error messages).
        """
        arguments = vars(self.parser().parse_args(argv))
        protocol = arguments.pop("protocol", None)
        values = {p.name: p.default for p in self.parameters}
        source = {p.name: "default" for p in self.parameters}
        if protocol is not None:
            for key, value in self.read_file(protocol).items():
                values[key], source[key] = value, f"{protocol}"
        for key, value in arguments.items():
            parameter = self._by_name[key]
            if value is not None:
                _check_range(parameter, value, f"command line ({parameter.flag})")
            values[key], source[key] = value, f"command line ({parameter.flag})"
        values["_source"] = source
        values["_protocol_file"] = protocol
        for parameter in self.parameters:
            if parameter.required and values[parameter.name] is None:
                raise ProtocolError(
                    f"{self.name}: {parameter.name!r} is required: give {parameter.flag} or set it in the protocol file"
                )
            if parameter.must_exist:
                self.check_file(values, parameter.name)
        return values

    def check_file(self, values: dict[str, Any], key: str) -> Optional[Path]:
        """The path under ``key``, checked to exist; the error names the key and where it was set."""
        path = values.get(key)
        if path is None:
            return None
        path = Path(path)
        if not path.is_file():
            where = values.get("_source", {}).get(key, "default")
            raise ProtocolError(f"{where}: {key} file {str(path)!r} does not exist (key {key!r})")
        return path


def pretrained_files(system: str) -> dict[str, Path]:
    """Paths of a shipped showcase system: ``structure`` (structure.pdb) and ``model`` (model.pt)."""
    if system not in PRETRAINED_SYSTEMS:
        raise ProtocolError(f"unknown pretrained system {system!r}; choose one of {', '.join(PRETRAINED_SYSTEMS)}")
    directory = PRETRAINED_DIR / system
    return {"structure": directory / "structure.pdb", "model": directory / "model.pt"}


def resolve_system_files(schema: ProtocolSchema, values: dict[str, Any], *, need_model: bool = True) -> None:
    """Fill ``structure`` and ``model`` from the pretrained ``system`` when not given, and check they exist.

    Modifies ``values`` in place. Raises :class:`ProtocolError` naming the key
    (and the file or flag that set it) when a file is missing.
    """
    system = values.get("system")
    shipped = pretrained_files(system) if system else {}
    keys = ("structure", "model") if need_model else ("structure",)
    for key in keys:
        if values.get(key) is None:
            if not shipped:
                raise ProtocolError(f"{schema.name}: no {key} given: pass --{key} FILE or choose a pretrained --system")
            values[key] = shipped[key]
            values["_source"][key] = f"pretrained system {system!r}"
            if not shipped[key].is_file():
                raise ProtocolError(
                    f"{schema.name}: the shipped {key} of {system!r} is not present ({shipped[key]}); "
                    f"pass --{key} FILE"
                )
        schema.check_file(values, key)


def _rank(source: str) -> int:
    """Precedence of where a value came from: default < protocol file < command line."""
    if source == "default" or source.startswith("pretrained"):
        return 0
    return 2 if source.startswith("command line") else 1


def steps_from(values: dict[str, Any], *, steps_key: str = "steps", ns_key: str = "ns") -> int:
    """Number of MD steps from ``steps`` or ``ns`` (with ``timestep_fs``).

    When both are set, the one from the higher-precedence source wins (command
    line over protocol file over default); both from the same source is an error.
    """
    steps, ns = values.get(steps_key), values.get(ns_key)
    source = values.get("_source", {})
    if steps is not None and ns is not None:
        steps_rank, ns_rank = _rank(source.get(steps_key, "default")), _rank(source.get(ns_key, "default"))
        if steps_rank == ns_rank:
            raise ProtocolError(
                f"give either {steps_key} or {ns_key}, not both (both set by {source.get(steps_key, 'default')})"
            )
        if steps_rank > ns_rank:
            ns = None
        else:
            steps = None
    if ns is not None:
        return round(ns * 1e6 / values["timestep_fs"])
    if steps is None:
        raise ProtocolError(f"give the run length as --{steps_key.replace('_', '-')} N or --{ns_key} NS")
    return int(steps)
