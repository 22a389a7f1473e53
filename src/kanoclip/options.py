"""Each command-line flag is declared once, beside the config field it sets.

`option(default, help=...)` is `dataclasses.field` with the flag in the field's metadata. The CLI builds every
parser from these fields (`kanoclip.cli.flags`), reads `--config FILE` into the same fields and prints them back with
`--print-config`: a flag cannot be parsed and then forgotten, and its default is written once, here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

FLAG = "kanoclip.flag"


@dataclass(frozen=True)
class Flag:
    """How one config field appears on the command line."""

    help: str
    name: str | None = None  # "--batch-size"; None: the field's name with dashes
    old: tuple[str, ...] = ()  # earlier names, still accepted with a one-line deprecation warning
    metavar: str | None = None
    choices: tuple[Any, ...] | None = None
    positional: bool = False
    nargs: str | None = None  # "?" (with `const`): an optional value; "+": several values after one flag
    const: Any = None
    scale: float = 1.0  # the flag's unit times this is the field's: --max-upload-mb sets max_upload_bytes
    negate: bool = False  # a switch that sets a true-by-default field false (--quiet sets progress)
    group: str | None = None  # the --help section, when not the config's own
    secret: bool = False  # never printed by --print-config (an API key)


def option(default: Any = dataclasses.MISSING, *, help: str, **flag: Any) -> Any:
    """A dataclass field with its flag: `x: int = option(8, help="...")`."""
    metadata = {FLAG: Flag(help=help, **flag)}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_of(field: dataclasses.Field[Any]) -> Flag | None:
    """The field's flag, or None for a field the command line does not set."""
    return field.metadata.get(FLAG)


def flag_name(field: dataclasses.Field[Any]) -> str:
    flag = flag_of(field)
    return (flag.name if flag and flag.name else None) or "--" + field.name.replace("_", "-")
