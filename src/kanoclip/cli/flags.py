"""The command line, built from the config dataclasses.

Every flag comes from the field it sets (`kanoclip.options.option`), so parsing, `--config FILE` (YAML: one mapping
per section) and `--print-config` read and write the same fields, and a flag cannot be parsed and then forgotten.
Values come from the field's default, then this command's own default, then the config file, then the flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import re
import sys
import types
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from kanoclip.errors import ConfigError
from kanoclip.options import Flag, flag_name, flag_of

T = TypeVar("T")
REQUIRED = object()  # a field with no default: a flag or a config-file value must give it


@dataclass(frozen=True)
class Section:
    """A config dataclass a command fills from its flags.

    `only` / `skip` choose the fields it shows; `defaults` and `choices` are this command's own (evaluate runs fp32).
    A `partial` section keeps only what was set, in order: the model section becomes the run's model changes, never
    a full config that would override a checkpoint's. Its config-file mapping may name any field of the class."""

    key: str
    cls: type
    title: str | None = None
    only: tuple[str, ...] | None = None
    skip: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    choices: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    partial: bool = False

    def fields(self) -> list[dataclasses.Field[Any]]:
        return [
            f
            for f in dataclasses.fields(self.cls)
            if flag_of(f) and (self.only is None or f.name in self.only) and f.name not in self.skip
        ]

    def default(self, f: dataclasses.Field[Any]) -> Any:
        if f.name in self.defaults:
            return self.defaults[f.name]
        if f.default is not dataclasses.MISSING:
            return f.default
        if f.default_factory is not dataclasses.MISSING:
            return f.default_factory()
        return REQUIRED


@dataclass(frozen=True)
class Command:
    """One `kanoclip COMMAND`: its sections of flags and the function that runs it (or its subcommands)."""

    name: str
    help: str
    run: Callable[[Parsed], int] | None = None
    sections: tuple[Section, ...] = ()
    epilog: str = ""
    subcommands: tuple[Command, ...] = ()


class Parsed:
    """A command's config objects, filled from defaults < `--config` file < flags, and what the user chose: the
    options given (by flag or file) at a value other than the command's default, so a config file written by
    `--print-config` chooses what the flags it came from chose."""

    def __init__(self, command: Command, values: dict[str, dict[str, Any]], chosen: dict[str, list[str]]) -> None:
        self.command, self.values, self.chosen = command, values, chosen
        self._built: dict[str, Any] = {}

    def section(self, key: str) -> Section:
        return next(s for s in self.command.sections if s.key == key)

    def get(self, cls: type[T], key: str | None = None) -> T:
        """The section of this class, built once; a class with `model_changes` and `user_set` fields (RunConfig)
        also receives the model section's values and the names the user set in its own section."""
        section = next(s for s in self.command.sections if s.cls is cls and (key is None or s.key == key))
        if section.key not in self._built:
            values = dict(self.values[section.key])
            names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
            if "model_changes" in names and "model" in self.values:
                values["model_changes"] = tuple(self.values["model"].items())
            if "user_set" in names:
                values["user_set"] = tuple(sorted(self.chosen.get(section.key, ())))
            self._built[section.key] = cls(**values)
        return self._built[section.key]

    def document(self) -> dict[str, dict[str, Any]]:
        """What `--print-config` prints and `--config` reads back."""
        return {key: {k: _plain(v) for k, v in values.items()} for key, values in self.values.items()}


# -- building the parser --------------------------------------------------------------------------------------------
def add_command(sub: Any, command: Command) -> None:
    parser = sub.add_parser(
        command.name,
        help=command.help,
        description=command.help,
        epilog=command.epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(_command=command, _prog=parser.prog)
    if command.subcommands:
        inner = parser.add_subparsers(dest=f"_{command.name}", required=True, metavar="WHAT")
        for child in command.subcommands:
            add_command(inner, child)
        return
    groups: dict[str | None, Any] = {None: parser}
    for section in command.sections:
        add_section(parser, section, groups)
    if any(s.key == "model" for s in command.sections):
        _group(parser, groups, "model").add_argument(
            "--set",
            dest="model.__set__",
            action="append",
            default=argparse.SUPPRESS,
            metavar="FIELD=VALUE",
            help="set any model config field (`kanoclip info` lists them); VALUE is JSON, e.g. tap_layers=[12,24]",
        )
    config = parser.add_argument_group("configuration")
    config.add_argument(
        "--config", metavar="FILE", help="read these options from a YAML file (flags given as well win)"
    )
    config.add_argument(
        "--print-config", action="store_true", help="print the options in effect as YAML for --config, and exit"
    )


def _group(parser: argparse.ArgumentParser, groups: dict[str | None, Any], title: str | None) -> Any:
    if title not in groups:
        groups[title] = parser.add_argument_group(title)
    return groups[title]


def add_section(parser: argparse.ArgumentParser, section: Section, groups: dict[str | None, Any]) -> None:
    hints = get_type_hints(section.cls)
    for f in section.fields():
        flag = flag_of(f)
        assert flag is not None
        kind, many = kind_of(hints[f.name])
        default = section.default(f)
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": _help(flag, default, kind)}
        if flag.positional:
            parser.add_argument(
                f"{section.key}.{f.name}",
                metavar=flag.metavar or f.name.upper(),
                nargs="*" if many else "?",
                type=kind,
                **kwargs,
            )
            continue
        group = _group(parser, groups, flag.group or section.title)
        names = (flag_name(f), *flag.old)
        kwargs["dest"] = f"{section.key}.{f.name}"
        if kind is bool:
            group.add_argument(*names, action=_Switch, const=not flag.negate, old=flag.old, **kwargs)
            continue
        choices = section.choices.get(f.name, flag.choices)
        extra = {"nargs": flag.nargs, "const": flag.const} if flag.nargs else {}
        group.add_argument(
            *names,
            action=_Append if many else _Store,
            type=float if flag.scale != 1 else kind,  # --max-store-gb 0.5 sets a count of bytes
            choices=choices,
            metavar=flag.metavar or (None if choices else names[0].lstrip("-").replace("-", "_").upper()),
            old=flag.old,
            **extra,
            **kwargs,
        )


def kind_of(hint: Any) -> tuple[type, bool]:
    """The scalar type a field's annotation parses to, and whether the field holds several (a tuple)."""
    if get_origin(hint) in (Union, types.UnionType):
        hint = next(a for a in get_args(hint) if a is not type(None))
    if get_origin(hint) is tuple:
        return get_args(hint)[0], True
    return hint, False


def _help(flag: Flag, default: Any, kind: type) -> str:
    if default is REQUIRED:
        return flag.help if flag.positional else f"{flag.help} (required)"
    if flag.positional or flag.negate or default in (None, (), False, ""):
        return flag.help
    shown = default / flag.scale if flag.scale != 1 else default
    if isinstance(shown, float) and shown.is_integer() and kind is int:
        shown = int(shown)
    return f"{flag.help} (default {shown:g})" if isinstance(shown, float) else f"{flag.help} (default {shown})"


class _Deprecating(argparse.Action):
    """An action that says, in one line, when a flag is given by its old name."""

    def __init__(self, *args: Any, old: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.old, self.new = old, kwargs["option_strings"][0] if kwargs.get("option_strings") else None

    def said(self, option_string: str | None) -> None:
        if option_string in self.old:
            warnings.warn(f"{option_string} is deprecated: use {self.new}", FutureWarning, stacklevel=2)


class _Store(_Deprecating):
    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        self.said(option_string)
        setattr(namespace, self.dest, values)


class _Append(_Deprecating):
    """A repeatable flag; with nargs="+" one flag may also take several values (`--calibration-images a b`)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        self.said(option_string)
        given = values if isinstance(values, list) else [values]
        setattr(namespace, self.dest, [*getattr(namespace, self.dest, []), *given])


class _Switch(_Deprecating):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, nargs=0, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        self.said(option_string)
        setattr(namespace, self.dest, self.const)


# -- resolving values -----------------------------------------------------------------------------------------------
def resolve(command: Command, args: argparse.Namespace) -> Parsed:
    """Defaults, then the `--config` file, then the flags, for every section of the command. For `--print-config` a
    missing required value prints as null (a template to fill in) instead of stopping."""
    given = vars(args)
    prog = given.get("_prog", f"kanoclip {command.name}")
    document = read_config(given["config"]) if given.get("config") else {}
    document = _legacy_model_file(command, document, given.get("config"))
    unknown = sorted(set(document) - {s.key for s in command.sections})
    if unknown:
        known = ", ".join(s.key for s in command.sections)
        raise ConfigError(f"{given['config']}: unknown section(s) {unknown} for `{prog}`; its sections: {known}")
    values: dict[str, dict[str, Any]] = {}
    chosen: dict[str, list[str]] = {}
    for section in command.sections:
        from_file = _file_values(section, document.get(section.key) or {}, given.get("config"))
        from_flags = _flag_values(section, given)
        merged = {} if section.partial else {f.name: section.default(f) for f in section.fields()}
        merged.update(from_file)
        merged.update(from_flags)
        missing = [f for f in section.fields() if merged.get(f.name) is REQUIRED]
        if missing and not given.get("print_config"):
            raise ConfigError(f"`{prog}` needs {_named(missing[0])}")
        merged.update({f.name: None for f in missing})
        values[section.key] = merged
        defaults = {f.name: section.default(f) for f in section.fields()}
        given_names = dict.fromkeys([*from_file, *from_flags])
        chosen[section.key] = [n for n in given_names if section.partial or merged[n] != defaults.get(n, REQUIRED)]
    return Parsed(command, values, chosen)


def _named(f: dataclasses.Field[Any]) -> str:
    flag = flag_of(f)
    return (flag.metavar or f.name.upper()) if flag and flag.positional else f"{flag_name(f)}"


def _flag_values(section: Section, given: dict[str, Any]) -> dict[str, Any]:
    hints = get_type_hints(section.cls)
    out: dict[str, Any] = {}
    for f in section.fields():
        dest = f"{section.key}.{f.name}"
        if dest not in given:
            continue
        flag = flag_of(f)
        assert flag is not None
        value = given[dest]
        kind, many = kind_of(hints[f.name])
        if flag.positional and many and not value:
            continue  # nothing given: a config file or the default may still supply it
        if flag.scale != 1 and value is not None:
            value = int(value * flag.scale) if kind is int else value * flag.scale
        out[f.name] = tuple(value) if many else value
    for item in given.get(f"{section.key}.__set__", ()):
        name, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects FIELD=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw  # bare strings need no quotes
        out[name.strip().replace("-", "_")] = tuple(value) if isinstance(value, list) else value
    return out


def _file_values(section: Section, mapping: Any, path: str | None) -> dict[str, Any]:
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{path}: section {section.key!r} must be a mapping of option names to values")
    fields = dataclasses.fields(section.cls) if section.partial else section.fields()
    names = {f.name for f in fields}
    by_flag = {flag_name(f).lstrip("-").replace("-", "_"): f.name for f in fields if flag_of(f)}
    unknown = sorted(k for k in mapping if k not in names and str(k).replace("-", "_") not in by_flag)
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), [*names, *by_flag], n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {sorted(names)}"
        raise ConfigError(f"{path}: unknown option(s) {unknown} in section {section.key!r}{hint}")
    hints = get_type_hints(section.cls)
    out = {}
    for key, value in mapping.items():
        name = key if key in names else by_flag[str(key).replace("-", "_")]  # a flag's name works as its key
        kind, many = kind_of(hints[name])
        out[name] = _checked(value, kind, many, f"{path}: {section.key}.{name}")
    return out


def _checked(value: Any, kind: type, many: bool, where: str) -> Any:
    """A config-file value of the field's kind (a list for a tuple field), or a clear error."""
    if value is None:
        return None
    if many:
        items = value if isinstance(value, list) else [value]
        return tuple(_checked(v, kind, False, where) for v in items)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
        Path: isinstance(value, str),
    }.get(kind, True)
    if not ok:
        raise ConfigError(f"{where} must be {getattr(kind, '__name__', kind)}, got {value!r}")
    return Path(value) if kind is Path else value


def read_config(path: str) -> dict[str, Any]:
    import yaml

    try:
        document = yaml.safe_load(Path(path).expanduser().read_text())
    except FileNotFoundError as e:
        raise ConfigError(f"--config {path}: no such file") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--config {path}: cannot read it ({e})") from e
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"--config {path} is not valid YAML{at}: {problem}") from e
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"--config {path} must hold a mapping of sections (see --print-config)")
    return document


def _legacy_model_file(command: Command, document: dict[str, Any], path: str | None) -> dict[str, Any]:
    """`--config` once named a model-config JSON: a file whose keys are all model fields still means that, with a
    one-line deprecation warning."""
    model = next((s for s in command.sections if s.key == "model"), None)
    run = next((s for s in command.sections if "model_file" in {f.name for f in s.fields()}), None)
    if not document or model is None or run is None:
        return document
    fields = {f.name for f in dataclasses.fields(model.cls)}
    if not set(document) <= fields or set(document) & {s.key for s in command.sections}:
        return document
    warnings.warn(
        "--config with a model-config JSON is deprecated: use --preset (--config now reads the command's "
        "options as YAML, see --print-config)",
        FutureWarning,
        stacklevel=2,
    )
    return {run.key: {"model_file": path}}


URL_PASSWORD = re.compile(r"(://[^/:@\s]*:)[^@/\s]*@")  # scheme://user:PASSWORD@host


def print_config(parsed: Parsed) -> int:
    """The options in effect as YAML. Each section is built first, so a value its config refuses is said here, not
    at the run; secrets (API keys) print as null and passwords in URLs as ***, so the file can be kept."""
    import yaml

    document = parsed.document()
    for section in parsed.command.sections:
        if not section.partial and None not in parsed.values[section.key].values():
            parsed.get(section.cls, section.key)
        for f in section.fields():
            flag = flag_of(f)
            if flag is not None and flag.secret and f.name in document[section.key]:
                document[section.key][f.name] = None
            elif isinstance(document[section.key].get(f.name), str):  # a URL's password (--database, --mqtt)
                document[section.key][f.name] = URL_PASSWORD.sub(r"\1***@", document[section.key][f.name])
    sys.stdout.write(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
    return 0


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def all_commands(commands: Iterable[Command]) -> Iterable[tuple[str, Command]]:
    """Every runnable command with its full name ("reference build"), for tests and docs."""
    for command in commands:
        if command.subcommands:
            for name, child in all_commands(command.subcommands):
                yield f"{command.name} {name}", child
        else:
            yield command.name, command
