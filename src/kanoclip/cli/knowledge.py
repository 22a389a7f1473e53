"""`kanoclip knowledge`: general and per-image knowledge from a chat or vision model, and its lint (SPEC §3.2.1)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from kanoclip.cli.flags import Command, Parsed, Section
from kanoclip.knowledge.config import ServerConfig
from kanoclip.options import option


@dataclass(frozen=True, kw_only=True)
class AskOptions:
    """Where answers are cached and which prompts ask for them."""

    out: str = option(metavar="FILE", help="the knowledge JSON to write")
    cache: str = option(
        "~/.cache/kanoclip/answers.jsonl", metavar="FILE", help="answer cache: a re-run asks only what is missing"
    )
    templates: str | None = option(
        None, metavar="DIR", help="prompt templates replacing ours (same file names; {name}, {a_name})"
    )


@dataclass(frozen=True, kw_only=True)
class GeneralOptions:
    classes: tuple[str, ...] = option(
        (), positional=True, help="class names (default: every class of the shipped base)"
    )


@dataclass(frozen=True, kw_only=True)
class ImagesOptions:
    dataset: str = option(positional=True, metavar="DIR", help="the auxiliary dataset (its test split, as in training)")
    layout: str | None = option(None, help="dataset layout, when detection is ambiguous")


@dataclass(frozen=True, kw_only=True)
class CheckOptions:
    file: str | None = option(
        None, positional=True, metavar="FILE", help="a general-knowledge JSON (default: the shipped base)"
    )


def _ask(parsed: Parsed, what: str) -> int:
    from kanoclip._files import atomic_write_json
    from kanoclip.knowledge.base import KnowledgeBase
    from kanoclip.knowledge.cache import AnswerCache
    from kanoclip.knowledge.client import ChatClient
    from kanoclip.knowledge.generate import generate_general, generate_images, load_templates

    ask = parsed.get(AskOptions)
    client = ChatClient(parsed.get(ServerConfig))
    cache, templates = AnswerCache(ask.cache), load_templates(ask.templates)
    if what == "general":
        classes = list(parsed.get(GeneralOptions).classes) or list(KnowledgeBase.load().classes)
        knowledge, progress = generate_general(client, classes, cache, templates)
        knowledge.save(ask.out, progress.failures)
    else:
        from kanoclip.data.datasets import load_dataset

        o = parsed.get(ImagesOptions)
        index = load_dataset(o.dataset, o.layout)
        print(index.summary())
        document, progress = generate_images(client, index, cache, templates)
        atomic_write_json(Path(ask.out), document)
    print(f"{progress.done} answered, {progress.failed} failed -> {ask.out}")
    for failure in progress.failures:
        print(f"  failed: {failure['item']}: {failure['reason']}", file=sys.stderr)
    return 1 if progress.failed else 0


def check(parsed: Parsed) -> int:
    from kanoclip.knowledge.base import KnowledgeBase
    from kanoclip.knowledge.lint import defect_types, lint_base

    path = parsed.get(CheckOptions).file
    knowledge = KnowledgeBase.load(path)
    problems = lint_base(knowledge.classes, defect_types())
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    counts = sum(len(e.normal) + len(e.abnormal) for e in knowledge.classes.values())
    where = path or "the shipped knowledge base"
    print(f"{where}: {len(knowledge.classes)} classes, {counts} sentences, {len(problems)} problem(s)")
    return 1 if problems else 0


EPILOG = """examples:
  kanoclip knowledge check                            lint the shipped knowledge base (no server)
  kanoclip knowledge check k.json                     lint a file you wrote or edited
  kanoclip knowledge general --model gpt-4o-mini --out knowledge.json
  kanoclip knowledge general bottle screw --base-url http://localhost:11434/v1 --model llama3.1 --out k.json
  kanoclip knowledge images /data/mvtec --base-url http://localhost:8000/v1 --model Llama-3.2-11B-Vision \\
      --out mvtec_vqa.json

the package ships a general knowledge base for every class of the field's benchmarks, written by hand (its header says
how); these commands rebuild it with your server, and what the server answers passes the same lint as `check`.
"""

SERVER = Section("server", ServerConfig, title="the chat server")
KNOWLEDGE = Command(
    "knowledge",
    "generate knowledge with an LLM / VQA server",
    subcommands=(
        Command(
            "general",
            "normal/abnormal sentences per class from a chat model",
            lambda parsed: _ask(parsed, "general"),
            (Section("general", GeneralOptions), Section("ask", AskOptions), SERVER),
            EPILOG,
        ),
        Command(
            "images",
            "one description per image of an auxiliary dataset from a vision model",
            lambda parsed: _ask(parsed, "images"),
            (Section("images", ImagesOptions), Section("ask", AskOptions), SERVER),
            EPILOG,
        ),
        Command(
            "check",
            "lint a knowledge file (no server): lengths, articles, repeats, naming",
            check,
            (Section("check", CheckOptions),),
            EPILOG,
        ),
    ),
    epilog=EPILOG,
)
