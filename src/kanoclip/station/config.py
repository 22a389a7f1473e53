"""What a station server is allowed and promised: keys, hosts, request and process limits, batching, retention."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeConfig:
    api_key: str | None = None
    allowed_hosts: tuple[str, ...] = ()  # Host names served besides loopback and the bound address
    max_request_bytes: int = 64 * 1024 * 1024  # a whole request, counted as it arrives
    max_request_pixels: int = 64_000_000  # all images of one request together, checked before decoding
    max_inflight_pixels: int = 256_000_000  # decoded and not yet answered, over all requests of the process
    pixel_wait_s: float = 30.0  # how long a request waits for the process's pixel budget before 503
    body_timeout_s: float = 60.0  # for a request's whole body
    max_reference_images: int = 1_000  # good parts in the bank
    max_reference_bytes: int = 1024 * 1024 * 1024  # the bank's features, after the coreset
    max_batch: int = 8
    max_wait_ms: float = 10.0
    max_upload_bytes: int = 20 * 1024 * 1024  # per file; pixels are bounded by the detector's decoder limits
    max_files: int = 64
    poll_s: float = 1.0  # how often profile changes made through other instances are looked for
    keep_days: float | None = None  # results older than this are pruned (None: kept)
    max_store_bytes: int | None = None  # the oldest results are pruned while their files hold more
    prune_every_s: float = 600.0
