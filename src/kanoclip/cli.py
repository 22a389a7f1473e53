"""The `kanoclip` command: argument parsing only; every subcommand calls one library function."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from .config import KAnoCLIPConfig
from .errors import ConfigError, KanoclipError

EPILOG = """examples:
  kanoclip info                                    resolved config and parameter counts of the default model
  kanoclip info --backbone ViT-B-16 --image-size 224
  kanoclip info --pretrained /models/ViT-L-14-336px.pt   an OpenAI .pt file or an open_clip checkpoint
  kanoclip info --set tap_mode=top --set map_sigma=2      any config field, value as JSON

weights: --pretrained takes an open_clip tag (default 'openai', downloaded and cached by open_clip), a local file,
or 'none' for random weights (tests and smoke runs only: the outputs then measure the pipeline, not the method).
"""


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--config", metavar="JSON", help="a KAnoCLIPConfig JSON file to start from")
    group.add_argument("--backbone", help="open_clip model name or model-config .json (default ViT-L-14-336)")
    group.add_argument("--pretrained", help="open_clip tag, local checkpoint file, or 'none' (default openai)")
    group.add_argument("--image-size", type=int, help="run resolution in pixels (default 518)")
    group.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help='override any config field; VALUE is JSON (e.g. tap_layers=[12,24], tap_mode="top")',
    )


def model_config(args: argparse.Namespace) -> KAnoCLIPConfig:
    """The config named by the model options: file, then the named flags, then --set overrides."""
    config = KAnoCLIPConfig.from_json(args.config) if args.config else KAnoCLIPConfig()
    changes: dict[str, Any] = {}
    for flag, field in (("backbone", "backbone"), ("pretrained", "pretrained"), ("image_size", "image_size")):
        if getattr(args, flag) is not None:
            changes[field] = getattr(args, flag)
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects FIELD=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw  # bare strings need no quotes
        changes[key.strip().replace("-", "_")] = tuple(value) if isinstance(value, list) else value
    unknown = sorted(set(changes) - set(KAnoCLIPConfig.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"unknown config field(s) {unknown}; see `kanoclip info` for all fields")
    return config.replace(**changes)


def cmd_info(args: argparse.Namespace) -> int:
    from .model import KAnoCLIP

    model = KAnoCLIP(model_config(args))
    counts = model.parameter_counts()
    print(f"backbone: {model.backbone_source}")
    print("resolved config:")
    for key, value in model.config.to_dict().items():
        print(f"  {key}: {json.dumps(value)}")
    print("parameters:")
    print(f"  frozen (CLIP):        {counts['frozen']:>13,}")
    print(f"  learnable:            {counts['learnable']:>13,}")
    for part in ("prompts", "bi_cmci", "adapter"):
        print(f"    {part:<19} {counts[part]:>13,}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kanoclip",
        description="Zero-shot image anomaly detection with KAnoCLIP on a frozen CLIP.",
        epilog="Run `kanoclip COMMAND --help` for each command's options and examples.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: list[tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[..., int], str]] = [
        ("info", "print the resolved config and parameter counts", add_model_options, cmd_info, EPILOG),
    ]
    for name, help_text, add_options, func, epilog in commands:
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_options(p)
        p.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    warnings.simplefilter("default")
    try:
        return int(args.func(args))
    except KanoclipError as e:
        print(f"kanoclip: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kanoclip: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
