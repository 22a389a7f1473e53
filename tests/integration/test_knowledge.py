"""Knowledge: the shipped base, answer parsing, the chat client against a real local server with faults, the cache."""

from __future__ import annotations

import base64
import hashlib
import socket
from pathlib import Path

import pytest

from kanoclip.data.datasets import load_dataset
from kanoclip.data.datasets.synthetic import generate
from kanoclip.errors import KnowledgeError
from kanoclip.knowledge.cache import AnswerCache
from kanoclip.knowledge.client import AnswerFailed, ChatClient, ServerConfig, ServerUnreachable
from kanoclip.knowledge.generate import (
    generate_general,
    generate_images,
    load_templates,
)
from tests.support.chat_server import ChatServer


def fast_client(url: str, retries: int = 3, timeout: float = 5.0) -> ChatClient:
    return ChatClient(ServerConfig(url, "test-model", "key", timeout=timeout, retries=retries))


@pytest.mark.parametrize("fault", ["429", "500", "malformed", "empty"])
def test_a_transient_fault_is_retried_and_then_answered(fault: str) -> None:
    with ChatServer([fault]).running() as server:
        answer = fast_client(server.url).ask("describe")
    assert "smooth surface" in answer
    assert len(server.requests) == 2


def test_a_hang_past_the_client_timeout_is_retried() -> None:
    with ChatServer(["hang"], hang_s=30.0).running() as server:
        answer = fast_client(server.url, timeout=0.5).ask("describe")
    # the first request is still hanging (30 s) on the server: the answer can only come from the retry
    assert "smooth surface" in answer and len(server.requests) == 2


@pytest.mark.parametrize("status", ["400", "401"])
def test_a_non_retryable_refusal_fails_at_once_with_the_servers_message(status: str) -> None:
    with ChatServer(default=status).running() as server, pytest.raises(KnowledgeError, match=f"HTTP {status}"):
        fast_client(server.url, retries=3).ask("describe")
    assert len(server.requests) == 1


def test_persistent_faults_fail_after_the_bounded_retries() -> None:
    with ChatServer(default="500").running() as server, pytest.raises(AnswerFailed, match="HTTP 500"):
        fast_client(server.url, retries=2).ask("describe")
    assert len(server.requests) == 3


def test_connection_refused_says_the_server_cannot_be_reached() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(ServerUnreachable, match="--base-url"):
        fast_client(f"http://127.0.0.1:{port}/v1", retries=1).ask("describe")


def test_empty_answers_are_recorded_as_failures_not_dropped(tmp_path: Path) -> None:
    with ChatServer(default="empty").running() as server:
        kb, progress = generate_general(
            fast_client(server.url, retries=0), ["bottle"], AnswerCache(tmp_path / "c.jsonl"), load_templates()
        )
    assert kb.classes == {} and progress.failed == 2
    assert {f["item"] for f in progress.failures} == {"bottle/normal", "bottle/abnormal"}
    assert all("empty answer" in f["reason"] for f in progress.failures)


def test_general_generation_is_cached_so_a_rerun_asks_nothing(tmp_path: Path) -> None:
    cache_path = tmp_path / "cache.jsonl"
    with ChatServer().running() as server:
        server.answer = lambda request: "A bottle with a smooth rim.\nAn even colour across the part.\nA sharp screw."
        kb, progress = generate_general(
            fast_client(server.url), ["bottle", "screw"], AnswerCache(cache_path), load_templates()
        )
        asked = len(server.requests)
        again, _ = generate_general(
            fast_client(server.url), ["bottle", "screw"], AnswerCache(cache_path), load_templates()
        )
    assert asked == 4 and len(server.requests) == 4
    assert progress.done == 4 and kb.classes["bottle"].normal == ["A bottle with a smooth rim."]
    assert kb.classes["screw"].abnormal == ["A sharp screw."]
    assert again.classes.keys() == kb.classes.keys()
    assert "bottle" in server.requests[0]["messages"][0]["content"]


def test_server_answers_pass_the_lint_and_what_it_drops_is_recorded_with_the_reason(tmp_path: Path) -> None:
    answer = (
        "A metal nut with six even flats.\n"
        "A object with a scratch.\n"  # names no nut, and "a object"
        "An metal nut with a bent flange.\n"
        "The metal nut " + "looks very " * 7 + "clean.\n"
        "The nut's thread is clean and unbroken."
    )
    with ChatServer().running() as server:
        server.answer = lambda request: answer
        kb, progress = generate_general(
            fast_client(server.url), ["metal_nut", "object"], AnswerCache(tmp_path / "c.jsonl"), load_templates()
        )
        prompts = [r["messages"][0]["content"] for r in server.requests]
    assert kb.classes["metal_nut"].normal == [
        "A metal nut with six even flats.",
        "The nut's thread is clean and unbroken.",
    ]
    assert kb.classes["metal_nut"].subject == "metal nut" and "nut" in kb.classes["metal_nut"].terms
    dropped = [f["reason"] for f in progress.failures if f["item"] == "metal_nut/normal"]
    assert len(dropped) == 3 and all(r.startswith("dropped ") for r in dropped)
    assert any("'A' before 'object'" in r for r in dropped) and any("18 words" in r for r in dropped)
    assert "defect-free metal nut" in prompts[0] and "seen on a metal nut" in prompts[1]
    assert "seen on an object" in prompts[3]  # {a_name}: never "a object"
    assert "object" not in kb.classes  # nothing it was answered names an object correctly
    assert {"item": "object/normal", "reason": "no sentence passed the lint"} in progress.failures


def test_image_questions_send_the_image_inline_as_a_data_url(tmp_path: Path) -> None:
    generate(tmp_path / "data", size=32, train=0, good=1, per_defect=1)
    index = load_dataset(tmp_path / "data")
    with ChatServer().running() as server:
        document, progress = generate_images(
            fast_client(server.url), index, AnswerCache(tmp_path / "c.jsonl"), load_templates()
        )
    assert progress.done == len(index.test) == len(server.requests)
    for sample, request in zip(index.test, server.requests, strict=True):
        text, image = request["messages"][0]["content"]
        assert ("defect" in text["text"]) == bool(sample.label)
        assert (f"image of a {sample.cls} contains" if sample.label else f"of the {sample.cls} in") in text["text"]
        url = image["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        assert base64.b64decode(url.split(",", 1)[1]) == sample.image.read_bytes()
        entry = document["images"][sample.image.relative_to(index.root).as_posix()]
        assert entry["label"] == sample.label
        assert entry["sha256"] == hashlib.sha256(sample.image.read_bytes()).hexdigest()
