"""The flag-to-field table: every option of every command is declared once and reaches the config field it names.

`serve --keep-days` and `--max-store-gb` were once parsed and dropped; here each option is given a value other than
its default and the test reads that value back from the built config object, independently of how the CLI maps it.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, get_type_hints

import pytest

from kanoclip.cli import COMMANDS, build_parser, parse
from kanoclip.cli.flags import REQUIRED, Command, Section, all_commands, kind_of
from kanoclip.errors import ConfigError
from kanoclip.options import flag_of

# Options that set no config field, with where each is observed: the YAML round trip and --set in the tests below,
# --help by argparse.
ACTIONS = {"-h", "--help", "--config", "--print-config", "--set"}
COMMAND_LIST = list(all_commands(COMMANDS))


def subparser(name: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = build_parser()
    for word in name.split():
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return parser


def required_argv(command: Command, but: str | None = None, given: list[str] | None = None) -> list[str]:
    """The least a command line must give: its required positionals and options, with `given` in the place of the
    field `but` when that field is a positional (positionals keep their order)."""
    argv: list[str] = []
    for section in command.sections:
        for f in section.fields():
            flag = flag_of(f)
            assert flag is not None
            if f.name == but and flag.positional and given is not None:
                argv += given
            elif section.default(f) is REQUIRED and f.name != but:
                argv += ["req.kref"] if flag.positional else [flag.name or "--" + f.name.replace("_", "-"), "req.kref"]
    return argv


def sample(kind: type, default: Any, choices: Any) -> Any:
    """A value other than the default, of the field's kind."""
    if choices:
        return next(c for c in choices if c != default)
    if kind is int:
        return (default if isinstance(default, int) else 0) + 3
    if kind is float:
        return (default if isinstance(default, float | int) else 0) + 0.25
    return kind("sample-value")


def field_of(command: Command, dest: str) -> tuple[Section, dataclasses.Field[Any]]:
    key, _, name = dest.partition(".")
    section = next(s for s in command.sections if s.key == key)
    return section, next(f for f in section.fields() if f.name == name)


@pytest.mark.parametrize(("name", "command"), COMMAND_LIST, ids=[n for n, _ in COMMAND_LIST])
def test_every_option_is_declared_once_and_reaches_its_config_field(name: str, command: Command) -> None:
    parser = subparser(name)
    strings = [s for a in parser._actions for s in a.option_strings]
    assert len(strings) == len(set(strings)), f"{name}: an option declared twice"
    for action in parser._actions:
        if set(action.option_strings) & ACTIONS or isinstance(action, argparse._SubParsersAction):
            continue
        # Every option's destination is a config field: a hand-added add_argument would have no field to reach.
        section, f = field_of(command, action.dest)
        flag = flag_of(f)
        assert flag is not None
        kind, many = kind_of(get_type_hints(section.cls)[f.name])
        default = section.default(f)
        if kind is bool:
            argv, expected = [action.option_strings[0]], not flag.negate
        else:
            # A flag in other units (--max-store-gb) takes a fraction of its unit, as a user would type it.
            value = (default or 0) / flag.scale + 0.25 if flag.scale != 1 else sample(kind, default, action.choices)
            words = [str(value), str(value) + "-2"] if many and kind is str else [str(value)]
            if flag.positional:
                argv = words if many else [str(value)]
            else:
                argv = [w for word in words for w in (action.option_strings[0], word)]
            expected = tuple(kind(w) for w in words) if many else value * flag.scale if flag.scale != 1 else value
            if kind is int and flag.scale != 1:
                expected = int(value * flag.scale)
        if flag.positional:
            line = [*name.split(), *required_argv(command, but=f.name, given=argv)]
        else:
            line = [*name.split(), *required_argv(command, but=f.name), *argv]
        parsed = parse(line)
        if section.partial:  # the model section: a change the run records, in the order given
            assert dict(parsed.values[section.key])[f.name] == expected, (name, action.option_strings)
            continue
        assert parsed.values[section.key][f.name] == expected, (name, action.option_strings, line)
        try:
            built = parsed.get(section.cls, section.key)
        except ConfigError as e:  # a cross-field rule (an engine needs --exported): the value still reached it
            assert "--exported" in str(e) or "exported" in str(e), (name, action.option_strings, e)
            continue
        assert getattr(built, f.name) == expected, (name, action.option_strings)


def test_set_and_the_backbone_flags_become_the_runs_model_changes_in_order() -> None:
    from kanoclip import RunConfig

    run = parse(["detect", "x", "--backbone", "ViT-B-16", "--set", "tap_mode=top", "--set", "tap_layers=[3,6]"])
    assert run.get(RunConfig).model_changes == (("backbone", "ViT-B-16"), ("tap_mode", "top"), ("tap_layers", (3, 6)))
    assert run.get(RunConfig).model_config().tap_layers == (3, 6)


def test_a_flag_given_by_its_old_name_still_works_with_a_one_line_warning() -> None:
    from kanoclip import RunConfig

    with pytest.warns(FutureWarning, match="--knowledge-class is deprecated: use --class-name"):
        run = parse(["detect", "x", "--knowledge-class", "screw"]).get(RunConfig)
    assert run.class_name == "screw"
    with pytest.warns(FutureWarning, match="--model is deprecated: use --exported"):
        assert parse(["detect", "x", "--model", "dir"]).values["run"]["exported"] == "dir"


def test_a_config_file_sets_the_same_fields_and_flags_given_as_well_win(tmp_path: Path) -> None:
    from kanoclip import RunConfig
    from kanoclip.cli.detect import DetectOptions

    config = tmp_path / "c.yaml"
    config.write_text(
        "detect:\n  inputs: [a, b]\n  out: o\nrun:\n  batch_size: 3\n  class_name: screw\nmodel:\n  map_sigma: 2\n"
    )
    parsed = parse(["detect", "--config", str(config), "--batch-size", "5"])
    assert parsed.get(DetectOptions).inputs == ("a", "b") and parsed.get(DetectOptions).out == "o"
    run = parsed.get(RunConfig)
    assert (run.batch_size, run.class_name, run.model_changes) == (5, "screw", (("map_sigma", 2),))
    assert set(run.user_set) == {"batch_size", "class_name"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("run:\n  batch_size: eight\n", "run.batch_size must be int"),
        ("run:\n  batch_sise: 8\n", "unknown option(s) ['batch_sise'] in section 'run'"),
        ("serve:\n  port: 1\n", "unknown section(s) ['serve'] for `kanoclip detect`"),
        ("- a list\n", "must hold a mapping of sections"),
        ("run: [1\n", "is not valid YAML"),
        ("model:\n  tap_moed: top\n", "unknown option(s) ['tap_moed'] in section 'model'"),
    ],
)
def test_a_bad_config_file_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as e:
        parse(["detect", "x", "--config", str(config)])
    assert message in str(e.value)


def test_a_missing_config_file_and_a_missing_required_value_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        parse(["detect", "x", "--config", str(tmp_path / "none.yaml")])
    with pytest.raises(ConfigError, match="needs PATH"):
        parse(["detect"])
    with pytest.raises(ConfigError, match="needs --out"):
        parse(["export"])


def test_a_model_config_json_given_to_config_is_read_as_preset_with_a_warning(tmp_path: Path) -> None:
    """`--config` used to name a KAnoCLIPConfig JSON; such a file still works this version."""
    from kanoclip import RunConfig

    model = tmp_path / "model.json"
    model.write_text('{"backbone": "kanoclip-tiny", "map_sigma": 2}')
    with pytest.warns(FutureWarning, match="use --preset"):
        run = parse(["info", "--config", str(model)]).get(RunConfig)
    assert run.model_file == str(model)


def test_a_flag_that_took_several_values_still_does_and_may_repeat() -> None:
    """`export --calibration-images a b` (nargs="+" before the rewrite) failed as 'unrecognized arguments'."""
    from kanoclip.cli.export import ExportOptions

    parsed = parse(["export", "--out", "o", "--calibration-images", "a", "b", "--calibration-images", "c"])
    assert parsed.get(ExportOptions).calibration_images == ("a", "b", "c")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-store-gb", "-5"], "--max-store-gb must be > 0"),  # once pruned every result without a word
        (["--keep-days", "-1"], "--keep-days must be > 0"),
        (["--max-upload-mb", "0"], "--max-upload-mb must be > 0"),
        (["--port", "99999"], "--port must be 0..65535"),  # once an OverflowError traceback
    ],
)
def test_serve_limits_that_cannot_hold_are_refused(flags: list[str], message: str) -> None:
    from kanoclip.station.config import ServeConfig

    with pytest.raises(ConfigError, match=message):
        parse(["serve", *flags]).get(ServeConfig)


def test_a_config_file_may_name_an_option_by_its_flag_and_a_typo_gets_a_suggestion(tmp_path: Path) -> None:
    from kanoclip import RunConfig

    config = tmp_path / "c.yaml"
    config.write_text("run:\n  threshold: 0.4\n  preset: kanoclip-tiny\n  reference: [good]\n")
    run = parse(["detect", "x", "--config", str(config)]).get(RunConfig)
    assert (run.image_threshold, run.model_file, run.references) == (0.4, "kanoclip-tiny", ("good",))
    config.write_text("run:\n  treshold: 0.4\n")
    with pytest.raises(ConfigError, match="did you mean threshold"):
        parse(["detect", "x", "--config", str(config)])
    config.write_text("detect: [1,2\n")
    with pytest.raises(ConfigError) as e:
        parse(["detect", "x", "--config", str(config)])
    assert "is not valid YAML (line" in str(e.value) and "\n" not in str(e.value)


def test_print_config_keeps_secrets_out_and_prints_a_template_when_a_required_value_is_missing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import yaml

    from kanoclip.cli.flags import print_config

    print_config(parse(["serve", "--api-key", "s3cret", "--port", "8001"]))
    printed = capsys.readouterr().out
    assert "s3cret" not in printed and yaml.safe_load(printed)["serve"]["port"] == 8001
    assert print_config(parse(["reference", "build", "--print-config"])) == 0
    assert yaml.safe_load(capsys.readouterr().out)["reference"]["out"] is None
    with pytest.raises(ConfigError, match="`kanoclip reference build` needs --out"):
        parse(["reference", "build", "x"])
    # a password inside a URL (the broker's, the database's) prints as ***, the rest of the URL as given
    print_config(parse(["serve", "--mqtt", "mqtt://line:pw1@broker/plant", "--database", "postgresql://kc:pw2@db/kc"]))
    document = yaml.safe_load(capsys.readouterr().out)
    assert document["sinks"]["mqtt"] == "mqtt://line:***@broker/plant"
    assert document["station"]["database"] == "postgresql://kc:***@db/kc"


def test_every_flag_of_the_version_before_the_rewrite_is_still_accepted() -> None:
    """Keep today's flag names: the option strings of every command as the hand-written parser had them (770cb15,
    in tests/support/flags_before_layout.json) are all still options of the same command."""
    import json

    before = json.loads((Path(__file__).parents[2] / "support/flags_before_layout.json").read_text())
    for name, flags in before.items():
        parser = subparser(name)
        now = {s for a in parser._actions for s in a.option_strings}
        assert not set(flags) - now, (name, sorted(set(flags) - now))
