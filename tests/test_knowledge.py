"""Knowledge: the shipped base, answer parsing, the chat client against a real local server with faults, the cache."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from kanoclip.data.datasets import load_dataset
from kanoclip.data.datasets.synthetic import generate
from kanoclip.errors import KnowledgeError
from kanoclip.knowledge import KnowledgeBase, encode_sentences, knowledge_targets
from kanoclip.knowledge.cache import AnswerCache
from kanoclip.knowledge.client import AnswerFailed, ChatClient, ServerConfig, ServerUnreachable
from kanoclip.knowledge.generate import (
    generate_general,
    generate_images,
    load_templates,
    parse_sentences,
    sendable,
)

from .chat_server import ChatServer
from .conftest import tiny_model

# every class of the standard datasets as the loaders name them, and the entry each one gets
MVTEC = "bottle cable capsule carpet grid hazelnut leather metal_nut pill screw tile toothbrush transistor wood zipper"
VISA = "candle capsules cashew chewinggum fryum macaroni1 macaroni2 pcb4 pipe_fryum"
MPDD = "bracket_black bracket_brown bracket_white connector metal_plate tubes"
DTD = "Blotchy_099 Fibrous_183 Marbled_078 Matted_069 Mesh_114 Perforated_037 Stratified_154 Woven_001 Woven_068"
INDUSTRIAL = {c: c for c in f"{MVTEC} {VISA} {MPDD}".split()}
INDUSTRIAL |= {"pcb1": "pcb", "pcb2": "pcb", "pcb3": "pcb", "01": "btad_product", "02": "btad_product"}
INDUSTRIAL |= {"03": "btad_product", **{f"Class{i}": "dagm_texture" for i in range(1, 11)}}  # BTAD, DAGM
INDUSTRIAL |= {c: c.split("_")[0].lower() for c in f"{DTD} Woven_104 Woven_125 Woven_127".split()}
INDUSTRIAL |= {c: "electrical_commutator" for c in ("electrical_commutator", "electrical_commutators", "kolektorsdd")}
# medical sets as the loaders report their class (folder names as released; BMAD's by its folder)
MEDICAL = {
    "brain_mri": "brain_mri",
    "head_ct": "head_ct",
    "br35h": "brain_mri",
    "Br35H": "brain_mri",
    "covid_19": "covid19",
    "isic": "skin",
    "cvc_colondb": "colon",
    "cvc_clinicdb": "colon",
    "kvasir_seg": "colon",
    "endo": "endoscopy",
    "hyperkvasir": "endoscopy",  # the longest alias wins over "kvasir"
    "tn3k": "thyroid",
    "brats": "brats",
    "chest": "chest",
    "his": "histopathology",
    "liver": "liver",
    "resc": "retina",
    "oct17": "retina",
}


def fast_client(url: str, retries: int = 3, timeout: float = 5.0) -> ChatClient:
    return ChatClient(ServerConfig(url, "test-model", "key", timeout=timeout, retries=retries))


def test_shipped_base_covers_every_class_of_every_supported_dataset() -> None:
    kb = KnowledgeBase.load()
    for name, want in {**INDUSTRIAL, **MEDICAL}.items():
        assert kb.lookup(name)[0] == want, name
    assert kb.lookup("some_new_part")[0] == "object"  # class-agnostic fallback
    assert kb.lookup("thistle")[0] == "object"  # an alias ("his") counts only where a word starts


def test_every_shipped_sentence_fits_in_77_clip_tokens() -> None:
    kb = KnowledgeBase.load()
    sentences = [s for e in kb.classes.values() for s in e.normal + e.abnormal]
    tokens = open_clip.tokenize(sentences, context_length=200)  # untruncated: count start, words and end tokens
    assert int((tokens != 0).sum(1).max()) <= 77


def test_answers_parse_into_short_sentences() -> None:
    answer = (
        "Here are some descriptions:\n1. A smooth, even surface\n- a shiny part with no marks.\n\n2) ok\n"
        "* “Clean edges all around”"
    )
    assert parse_sentences(answer) == [
        "A smooth, even surface.",
        "a shiny part with no marks.",
        "Clean edges all around.",
    ]
    assert parse_sentences("Sure\n\n") == []


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


@pytest.mark.parametrize(("fmt", "mode"), [("BMP", "RGB"), ("WEBP", "RGB"), ("TIFF", "I;16"), ("PNG", "I;16")])
def test_formats_a_vision_api_may_refuse_are_sent_as_8_bit_png(fmt: str, mode: str) -> None:
    rng = np.random.default_rng(0)
    if mode == "I;16":
        pixels = rng.integers(0, 65535, (20, 30), dtype=np.uint16)
        image = Image.fromarray(pixels)
        expected = np.round((pixels - pixels.min()) / (pixels.max() - pixels.min()) * 255).astype(np.uint8)
        expected = np.repeat(expected[..., None], 3, axis=2)
    else:
        expected = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
        image = Image.fromarray(expected)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    sent = sendable(buffer.getvalue(), f"x.{fmt.lower()}")
    with Image.open(io.BytesIO(sent)) as decoded:
        assert decoded.format == "PNG" and decoded.mode == "RGB"
        assert np.array_equal(np.asarray(decoded), expected)


def test_jpeg_and_8_bit_png_are_sent_unchanged() -> None:
    for fmt in ("JPEG", "PNG"):
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (10, 20, 30)).save(buffer, format=fmt)
        assert sendable(buffer.getvalue(), "x") == buffer.getvalue()


@pytest.mark.slow
def test_a_run_killed_midway_and_restarted_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    classes = ["bottle", "cable", "capsule", "carpet", "grid", "hazelnut"]
    cache, out = tmp_path / "cache.jsonl", tmp_path / "k.json"
    command = [
        sys.executable,
        "-m",
        "kanoclip",
        "knowledge",
        "general",
        *classes,
        "--out",
        str(out),
        "--cache",
        str(cache),
    ]
    with ChatServer().running() as server:
        server.delay_s = 0.3
        server.answer = lambda request: "\n".join(f"the {c} in view, answer {len(server.requests)}." for c in classes)
        command += ["--base-url", server.url, "--model", "m", "--api-key", "k"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while len(server.requests) < 5 and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not out.exists()  # killed before the end: no half-written knowledge file
        before = len(server.requests)
        server.delay_s = 0.0
        subprocess.run(command, env=env, check=True, capture_output=True)
    lines = [json.loads(line) for line in cache.read_text().splitlines()]
    keys = [line["key"] for line in lines]
    assert len(keys) == len(set(keys)) == 2 * len(classes)  # every question once
    assert len(server.requests) - before <= 2 * len(classes) - (before - 1)  # only what was not answered is asked
    assert set(KnowledgeBase.load(out).classes) == set(classes)


def test_encoded_knowledge_is_cached_per_backbone_and_equals_the_text_tower(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KANOCLIP_CACHE", str(tmp_path))
    model = tiny_model()
    sentences = ["a flawless object.", "a scratched metal plate."]
    first = encode_sentences(model, sentences)
    assert len(list((tmp_path / "text").iterdir())) == 1
    with torch.no_grad():
        want = model.clip.encode_text(open_clip.tokenize(sentences))
    assert torch.allclose(first, want / want.norm(dim=-1, keepdim=True), atol=1e-6)
    model.clip.encode_text = None  # a second call must come from the cache
    assert torch.equal(encode_sentences(model, sentences), first)
    other = tiny_model(random_seed=5)
    assert not torch.allclose(encode_sentences(other, sentences), first)  # another backbone, another entry


def test_knowledge_targets_split_normal_and_abnormal_sentences() -> None:
    model = tiny_model()
    kb = KnowledgeBase.load()
    targets = knowledge_targets(model, kb, "bottle")
    entry = kb.classes["bottle"]
    assert targets.normal.shape[0] == len(entry.normal) and targets.abnormal.shape[0] == len(entry.abnormal)
