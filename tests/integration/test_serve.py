"""`kanoclip serve` over real HTTP: every field, bad uploads, API keys, micro-batching, the page, a real browser."""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from kanoclip.inference.detector import Detector
from kanoclip.inference.overlays import bar_height
from kanoclip.inference.thresholds import Thresholds
from kanoclip.station.serve import ServeConfig
from tests.conftest import tiny_detector
from tests.support.serving import bilevel_png, running_server
from tests.support.serving import detector as detector


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def test_detect_returns_every_field_for_real_images(detector: Detector, shared_data: Path) -> None:
    paths = [shared_data / "MVTec_AD/bottle/test/good/000.png", shared_data / "KolektorSDD/kos01/Part0.jpg"]
    detector.thresholds = Thresholds(0.5, 0.6)
    try:
        with running_server(detector, ServeConfig()) as url:
            files = [("files", (p.name, p.read_bytes())) for p in paths]
            response = httpx.post(f"{url}/v1/detect", files=files, params={"return_map": "true"}, timeout=60)
            info = httpx.get(f"{url}/v1/info").json()
    finally:
        detector.thresholds = Thresholds()
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body["timing"]) == {"decode_ms", "inference_ms", "total_ms"} and body["threshold"] == 0.5
    for path, result in zip(paths, body["results"], strict=True):
        score, amap = detector.predict(path)
        height, width = amap.shape
        assert result["filename"] == path.name and (result["width"], result["height"]) == (width, height)
        assert result["score"] == pytest.approx(score, abs=1e-5)
        assert result["label"] == int(score >= 0.5)
        overlay = Image.open(io.BytesIO(base64.b64decode(result["overlay_png"])))
        assert overlay.format == "PNG" and overlay.size == (width, height + bar_height(width))  # the colour bar below
        mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(result["mask_png"]))).convert("L")) > 0
        raw = np.load(io.BytesIO(base64.b64decode(result["map"]["npy_base64"])))
        assert raw.shape == (height, width) and result["map"]["shape"] == [height, width]
        assert np.abs(raw - amap).max() < 1e-5
        assert np.array_equal(mask, raw >= 0.6)
        assert result["batched_with"] >= 1
    assert info["resolution"] == 112 and info["device"] == "cpu" and info["random_weights"] is True
    assert info["mode"] == "training-free" and info["checkpoint_sha256"] is None
    assert info["threshold"] == 0.5 and info["map_threshold"] == 0.6


def test_bad_uploads_get_the_right_status_and_the_server_keeps_serving(shared_data: Path) -> None:
    good = ("files", ("good.png", (shared_data / "MVTec_AD/bottle/test/good/001.png").read_bytes()))
    rng = np.random.default_rng(0)
    detector = tiny_detector(max_pixels=1_000_000)
    config = ServeConfig(max_upload_bytes=300_000)
    cases = [
        ("corrupt.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, 400),
        ("notes.txt", b"these are not pixels", 400),
        ("deep16.png", png_bytes(rng.integers(0, 65535, (60, 80), dtype=np.uint16)), 200),
        ("alpha.png", png_bytes(rng.integers(0, 255, (60, 80, 4), dtype=np.uint8), "RGBA"), 200),
        ("gray.png", png_bytes(rng.integers(0, 255, (60, 80), dtype=np.uint8)), 200),
        ("huge.png", png_bytes(rng.integers(0, 255, (400, 400, 3), dtype=np.uint8)), 413),  # ~480 KB > 300 KB
        ("wide.png", png_bytes(np.zeros((1100, 1000), dtype=np.uint8)), 413),  # 1.1 MP > 1 MP, small file
    ]
    with running_server(detector, config) as url:
        for name, data, status in cases:
            response = httpx.post(f"{url}/v1/detect", files=[("files", (name, data))], timeout=60)
            assert response.status_code == status, (name, response.text)
            if status != 200:
                assert name in response.json()["detail"]
            else:
                assert response.json()["results"][0]["width"] == 80
            assert httpx.post(f"{url}/v1/detect", files=[good], timeout=60).status_code == 200


def test_an_api_key_guards_every_api_call(detector: Detector, shared_data: Path) -> None:
    image = ("files", ("a.png", (shared_data / "MVTec_AD/bottle/test/good/000.png").read_bytes()))
    with running_server(detector, ServeConfig(api_key="s3cret")) as url:
        for call in (
            lambda h: httpx.get(f"{url}/v1/info", headers=h),
            lambda h: httpx.post(f"{url}/v1/detect", files=[image], headers=h, timeout=60),
        ):
            assert call({}).status_code == 401
            assert call({"X-API-Key": "wrong"}).status_code == 401
            assert call({"X-API-Key": "s3cret"}).status_code == 200
            assert call({"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(f"{url}/").status_code == 200  # the page itself asks for the key
        assert "/v1/detect" in httpx.get(f"{url}/openapi.json").json()["paths"]
        schema = httpx.get(f"{url}/openapi.json").json()
        assert schema["components"]["securitySchemes"]["APIKeyHeader"] == {
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
            "description": "the server's --api-key",
        }
        assert httpx.get(f"{url}/docs").status_code == 404  # Swagger UI would load a third-party script
        assert httpx.get(f"{url}/v1/health").status_code == 200  # load balancers probe it without the key


def test_concurrent_requests_share_forward_passes_and_get_their_own_answers(
    detector: Detector, shared_data: Path
) -> None:
    paths = sorted((shared_data / "MVTec_derived_hazelnut_toy").rglob("*.jpg"))[:8]
    want = [detector.predict(p)[0] for p in paths]

    def post(url: str, path: Path) -> dict:
        response = httpx.post(f"{url}/v1/detect", files=[("files", (path.name, path.read_bytes()))], timeout=60)
        assert response.status_code == 200
        return response.json()["results"][0]

    for config, batched in ((ServeConfig(max_batch=8, max_wait_ms=300), True), (ServeConfig(max_batch=1), False)):
        with running_server(detector, config) as url, ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda p: post(url, p), paths))
        assert [r["filename"] for r in results] == [p.name for p in paths]
        assert [r["score"] for r in results] == pytest.approx(want, abs=1e-5)  # each got its own image's answer
        sizes = [r["batched_with"] for r in results]
        assert (max(sizes) > 1) if batched else (max(sizes) == 1), sizes


def test_request_size_and_file_count_limits_answer_413_and_the_server_keeps_serving(
    detector: Detector, shared_data: Path
) -> None:
    data = (shared_data / "MVTec_AD/bottle/test/good/000.png").read_bytes()
    config = ServeConfig(max_upload_bytes=len(data) + 10, max_files=3, max_request_bytes=8 * len(data))
    with running_server(detector, config) as url:
        too_many = [("files", (f"{i}.png", data)) for i in range(4)]
        response = httpx.post(f"{url}/v1/detect", files=too_many, timeout=60)
        assert response.status_code == 413 and "limit is 3" in response.json()["detail"]
        body = b"x" * (config.max_upload_bytes * config.max_files + 2 * 1024 * 1024)  # over the whole-body limit
        headers = {"content-type": "multipart/form-data; boundary=b"}
        response = httpx.post(f"{url}/v1/detect", content=body, headers=headers, timeout=60)
        assert response.status_code == 413 and "byte limit" in response.json()["detail"]
        ok = httpx.post(f"{url}/v1/detect", files=too_many[:3], timeout=60)
        assert ok.status_code == 200 and len(ok.json()["results"]) == 3


def test_a_forward_that_raises_fails_its_batch_with_500_and_the_server_keeps_serving(
    detector: Detector, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = ("files", ("a.png", (shared_data / "MVTec_AD/bottle/test/good/000.png").read_bytes()))
    real = detector.predict_many
    calls = {"n": 0}

    def fails_once(images: list[np.ndarray]) -> list[object]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("CUDA error: an illegal memory access (simulated)")
        return list(real(images))

    monkeypatch.setattr(detector, "predict_many", fails_once)
    with running_server(detector, ServeConfig()) as url:
        failed = httpx.post(f"{url}/v1/detect", files=[image], timeout=60)
        assert failed.status_code == 500
        after = httpx.post(f"{url}/v1/detect", files=[image], timeout=60)
    assert after.status_code == 200 and calls["n"] == 2


def test_references_over_http_change_scores_and_survive_concurrent_detects(shared_data: Path) -> None:
    """POST/GET/DELETE /v1/references; detections racing bank updates always see a whole bank (bounded, loopback)."""
    det = tiny_detector()
    goods = sorted((shared_data / "MVTec_derived_hazelnut_toy").rglob("train/good/*"))[:4]
    query = sorted((shared_data / "MVTec_derived_hazelnut_toy").rglob("test/*/*.jpg"))[0]
    image = [("files", (query.name, query.read_bytes()))]
    with running_server(det, ServeConfig(api_key="k", max_files=2)) as url:
        key = {"X-API-Key": "k"}
        assert httpx.get(f"{url}/v1/references", timeout=30).status_code == 401
        zero = httpx.post(f"{url}/v1/detect", files=image, headers=key, timeout=60).json()["results"][0]["score"]
        added = httpx.post(
            f"{url}/v1/references",
            files=[("files", (g.name, g.read_bytes())) for g in goods[:2]],
            headers=key,
            timeout=60,
        )
        assert added.status_code == 200 and added.json()["images"] == 2
        listed = httpx.get(f"{url}/v1/references", headers=key, timeout=30).json()
        assert listed["sha256"] == [hashlib.sha256(g.read_bytes()).hexdigest() for g in goods[:2]]
        few = httpx.post(f"{url}/v1/detect", files=image, headers=key, timeout=60).json()["results"][0]["score"]
        assert few != pytest.approx(zero, abs=1e-6)
        assert httpx.post(f"{url}/v1/references", files=image * 3, headers=key, timeout=60).status_code == 413
        corrupt = [("files", ("bad.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 20))]
        assert httpx.post(f"{url}/v1/references", files=corrupt, headers=key, timeout=60).status_code == 400

        seen: dict[str | None, list[str]] = {None: []}  # bank id -> the good parts it holds, in order

        def detect(_: int) -> tuple[float, str | None]:
            r = httpx.post(f"{url}/v1/detect", files=image, headers=key, timeout=120)
            assert r.status_code == 200, r.text
            result = r.json()["results"][0]
            return float(result["score"]), result["references"]["id"]

        def update(i: int) -> int:
            if i % 2:
                r = httpx.delete(f"{url}/v1/references", headers=key, timeout=120)
            else:
                files = [("files", (g.name, g.read_bytes())) for g in goods[i % 4 : i % 4 + 1]]
                r = httpx.post(f"{url}/v1/references", files=files, headers=key, timeout=120)
            seen[r.json()["id"]] = r.json()["sha256"]
            return r.status_code

        httpx.delete(f"{url}/v1/references", headers=key, timeout=30)
        with ThreadPoolExecutor(max_workers=6) as pool:  # detections and bank updates interleaved
            work = [(pool.submit(detect, i), pool.submit(update, i) if i < 6 else None) for i in range(12)]
            detections = [d.result() for d, _ in work]
            statuses = [u.result() for _, u in work if u is not None]
        assert statuses == [200] * 6
        by_sha = {hashlib.sha256(g.read_bytes()).hexdigest(): g for g in goods}
        offline = tiny_detector()
        for score, bank in detections:  # each detection saw one whole bank: its score is that bank's, exactly
            assert bank in seen, bank
            offline.clear_references()
            if seen[bank]:
                offline.add_references([by_sha[sha] for sha in seen[bank]])
            assert score == pytest.approx(offline.predict(query)[0], abs=1e-5), bank
        cleared = httpx.delete(f"{url}/v1/references", headers=key, timeout=30).json()
        assert cleared["images"] == 0
        again = httpx.post(f"{url}/v1/detect", files=image, headers=key, timeout=60).json()["results"][0]["score"]
        assert again == pytest.approx(zero, abs=1e-6)  # an empty bank is zero-shot again


def test_cross_site_and_rebound_requests_are_refused_and_the_bank_is_unchanged(shared_data: Path) -> None:
    """Any page the operator visits could once add to or delete the bank (no key is the default)."""
    det = tiny_detector()
    good = sorted((shared_data / "MVTec_derived_hazelnut_toy").rglob("train/good/*"))[0]
    files = [("files", (good.name, good.read_bytes()))]
    with running_server(det, ServeConfig()) as url:
        own = url.removeprefix("http://")
        attacks = [
            ("post", {"Origin": "http://evil.example"}, 403),
            ("post", {"Origin": "null"}, 403),
            ("post", {"Sec-Fetch-Site": "cross-site"}, 403),
            ("post", {"Origin": f"http://{own}", "Sec-Fetch-Site": "same-site"}, 403),  # a sibling subdomain
            ("delete", {"Origin": "http://evil.example"}, 403),
            ("post", {"Host": "attacker.example"}, 400),  # DNS rebinding: the name the page was loaded from
            ("get", {"Host": f"attacker.example:{own.rsplit(':', 1)[1]}"}, 400),
        ]
        assert httpx.post(f"{url}/v1/references", files=files, timeout=60).status_code == 200  # curl: no Origin
        for method, headers, status in attacks:
            if method == "post":
                r = httpx.post(f"{url}/v1/references", files=files, headers=headers, timeout=60)
            else:
                r = httpx.request(method, f"{url}/v1/references", headers=headers, timeout=60)
            assert r.status_code == status, (method, headers, r.text)
        assert det.references is not None and det.references.images == 1  # unchanged by every attack
        same = {"Origin": f"http://{own}", "Sec-Fetch-Site": "same-origin"}  # the server's own page
        assert httpx.delete(f"{url}/v1/references", headers=same, timeout=60).status_code == 200
    with running_server(det, ServeConfig(allowed_hosts=("inspect.example",))) as url:
        r = httpx.get(f"{url}/v1/health", headers={"Host": "inspect.example"}, timeout=30)
        assert r.status_code == 200  # a name the operator allows (behind a proxy)
        for address in ("192.168.1.5:8000", "[fe80::1]:8000"):  # a server on 0.0.0.0 reached by its address
            assert httpx.get(f"{url}/v1/health", headers={"Host": address}, timeout=30).status_code == 200


def test_a_chunked_body_is_cut_off_at_the_limit_without_being_stored(shared_data: Path) -> None:
    """A chunked upload once wrote 1,396 MB to /tmp before its 413: bytes are now counted as they arrive."""
    import tracemalloc

    det = tiny_detector()
    chunk = b"\0" * (256 * 1024)
    sent = {"bytes": 0}

    def body() -> Iterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="files"; filename="x.png"\r\n\r\n'
        for _ in range(400):  # 100 MB against a 1 MB limit
            sent["bytes"] += len(chunk)
            yield chunk

    headers = {"content-type": "multipart/form-data; boundary=b"}
    with running_server(det, ServeConfig(max_request_bytes=1024 * 1024)) as url:
        tracemalloc.start()
        try:
            r = httpx.post(f"{url}/v1/references", content=body(), headers=headers, timeout=60)
            assert r.status_code == 413 and "over the 1,048,576-byte limit" in r.json()["detail"]
        except httpx.TransportError:
            pass  # the server may close the connection while the client is still sending
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert peak < 32 * 1024 * 1024, peak
        assert det.references is None  # the route never ran
        ok = httpx.post(
            f"{url}/v1/detect",
            files=[("files", ("a.png", (shared_data / "MVTec_AD/bottle/test/good/000.png").read_bytes()))],
            timeout=60,
        )
        assert ok.status_code == 200


def test_a_detect_during_a_full_banks_reduction_is_answered_from_the_old_bank(
    shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past `reference_max_patches` each add reran the coreset on the forward thread: a detect waited 118 s."""
    import threading

    from kanoclip.model import references
    from tests.conftest import TINY

    det = tiny_detector(TINY.replace(reference_max_patches=100))
    goods = sorted((shared_data / "MVTec_derived_hazelnut_toy").rglob("train/good/*"))[:3]
    det.add_references(goods[:2])  # 2 x 64 patches: reduced to 100, the bank is full
    started, release = threading.Event(), threading.Event()
    real = references.greedy_coreset

    def held_coreset(*args: object, **kwargs: object) -> object:
        started.set()
        assert release.wait(60)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(references, "greedy_coreset", held_coreset)
    query = [("files", ("q.png", goods[0].read_bytes()))]
    third = [("files", (goods[2].name, goods[2].read_bytes()))]
    with running_server(det, ServeConfig(max_reference_images=3)) as url, ThreadPoolExecutor(max_workers=1) as pool:
        adding = pool.submit(httpx.post, f"{url}/v1/references", files=third, timeout=120)
        assert started.wait(60)  # the reduction is running...
        try:
            r = httpx.post(f"{url}/v1/detect", files=query, timeout=60)
            assert r.status_code == 200 and r.json()["results"][0]["references"]["images"] == 2  # ...on the old bank
            assert not adding.done()  # answered while the reduction still ran
        finally:
            release.set()
        assert adding.result().json()["images"] == 3
        listed = httpx.get(f"{url}/v1/references", timeout=30).json()
        assert listed["limits"] == {"images": 3, "bytes": 1024**3} and listed["patches_per_level"] == 100
        again = httpx.post(f"{url}/v1/references", files=third, timeout=120)
        assert again.status_code == 413  # full: 3 of at most 3
        monkeypatch.setattr(references, "greedy_coreset", real)
    det.clear_references()
    det.add_references([goods[0], goods[0], goods[1]])
    assert det.references is not None and det.references.images == 2  # the same image is held once


def test_a_requests_pixels_are_budgeted_from_the_headers_before_anything_is_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Four 6 KB PNGs of 7000 x 7000 in one request once took +3.4 GB and 113 s."""
    from kanoclip.station.app import uploads

    decoded: list[str] = []
    real = uploads.decode_upload
    monkeypatch.setattr(
        uploads, "decode_upload", lambda data, name, limits: decoded.append(name) or real(data, name, limits)
    )
    det = tiny_detector()
    big = bilevel_png(3000, 3000)  # 9 MP each
    with running_server(det, ServeConfig(max_request_pixels=20_000_000)) as url:
        files = [("files", (f"{i}.png", big)) for i in range(4)]
        r = httpx.post(f"{url}/v1/detect", files=files, timeout=60)
        assert r.status_code == 413 and "2.png: the request's images hold over its 20,000,000-pixel budget" in r.text
        assert decoded == []  # refused from the headers alone
        assert httpx.post(f"{url}/v1/detect", files=files[:2], timeout=60).status_code == 200


def test_the_process_pixel_budget_holds_across_concurrent_requests(
    shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    det = tiny_detector()
    inside, release = threading.Event(), threading.Event()
    real = det.predict_many

    def held(images: list[np.ndarray]) -> list[object]:
        inside.set()
        assert release.wait(60)
        return list(real(images))

    monkeypatch.setattr(det, "predict_many", held)
    image = [("files", ("a.png", bilevel_png(1000, 1000)))]  # 1 MP
    config = ServeConfig(max_inflight_pixels=1_500_000, pixel_wait_s=0.5)
    with running_server(det, config) as url, ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(httpx.post, f"{url}/v1/detect", files=image, timeout=60)
        assert inside.wait(60)  # the first request holds 1 MP of the process's 1.5
        try:
            second = httpx.post(f"{url}/v1/detect", files=image, timeout=60)
            assert second.status_code == 503 and "try again" in second.text
        finally:
            release.set()
        assert first.result().status_code == 200
        assert httpx.post(f"{url}/v1/detect", files=image, timeout=60).status_code == 200  # released


def test_abandoned_requests_are_not_computed(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two clients that sent 32 images each and hung up once made the next detect wait 46.8 s."""
    import time

    det = tiny_detector()
    real = det.predict_many

    def slow(images: list[np.ndarray]) -> list[object]:
        time.sleep(0.3)  # a forward pass that takes a while
        return list(real(images))

    monkeypatch.setattr(det, "predict_many", slow)
    data = (shared_data / "MVTec_AD/bottle/test/good/000.png").read_bytes()
    many = [("files", (f"{i}.png", data)) for i in range(32)]
    with running_server(det, ServeConfig(max_batch=4)) as url:
        batcher = None

        def hang_up() -> None:
            with pytest.raises(httpx.TimeoutException):
                httpx.post(f"{url}/v1/detect", files=many, timeout=httpx.Timeout(60, read=1.0))

        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(lambda _: hang_up(), range(2)))
        r = httpx.post(f"{url}/v1/detect", files=[("files", ("q.png", data))], timeout=60)
        assert r.status_code == 200
        from tests.support.serving import app_of

        batcher = app_of(url).state.batcher
        assert batcher.images < 40, batcher.images  # of the 64 queued, most were dropped, not computed


def test_half_sent_requests_are_closed_and_logged_once(shared_data: Path, caplog: pytest.LogCaptureFixture) -> None:
    """1,100 half-sent requests once locked the page out and logged a line per connection."""
    import logging
    import socket
    import time

    from kanoclip.station.guard import GuardedH11Protocol

    det = tiny_detector()
    previous = GuardedH11Protocol.header_timeout
    GuardedH11Protocol.header_timeout = 1.0
    caplog.set_level(logging.WARNING, logger="kanoclip.station.serve")
    sockets: list[socket.socket] = []
    try:
        with running_server(det, ServeConfig()) as url:
            port = int(url.rsplit(":", 1)[1])
            for _ in range(300):  # past limit_concurrency (256)
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                sockets.append(s)
            deadline = time.monotonic() + 30
            status = 0
            while time.monotonic() < deadline and status != 200:
                try:
                    status = httpx.get(f"{url}/", timeout=5).status_code
                except httpx.TransportError:
                    status = 0
                time.sleep(0.2)
            assert status == 200  # the page answers again once the half-sent ones are closed
            assert all(s.recv(1) == b"" for s in sockets[:20])  # closed by the server
    finally:
        GuardedH11Protocol.header_timeout = previous
        for s in sockets:
            s.close()
    lines = [r for r in caplog.records if "sent no complete request" in r.getMessage()]
    assert 1 <= len(lines) <= 2  # one line (a minute apart), not one per connection


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height and holds no pixel data: what a decompression bomb's header says."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\0"))  # one row's worth: the header is all Pillow reads at open
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


def test_a_900_megapixel_header_is_413_not_400(shared_data: Path) -> None:
    """A 30000 x 30000 PNG once got 400 "not an image"."""
    with running_server(tiny_detector(), ServeConfig()) as url:
        r = httpx.post(f"{url}/v1/detect", files=[("files", ("huge.png", png_header_only(30000, 30000)))], timeout=60)
    assert r.status_code == 413 and "huge.png" in r.json()["detail"]


def test_serve_says_port_in_use_before_loading_the_model_and_reads_the_key_from_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    from kanoclip.cli import main

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        port = str(busy.getsockname()[1])
        assert main(["serve", "--port", port, "--backbone", "no-such-backbone"]) == 2  # no model was built
        assert f"port {port} on 127.0.0.1 is in use: try another with --port" in capsys.readouterr().err
    finally:
        busy.close()
    assert main(["serve", "--api-key-file", str(tmp_path / "missing"), "--port", "0"]) == 2
    assert "cannot read --api-key-file" in capsys.readouterr().err
