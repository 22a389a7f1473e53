"""`kanoclip station adapt|jobs|cancel|models|promote|rollback`: a running station's adapt jobs and model versions,
through its HTTP API (#32)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kanoclip.cli.common import read_key
from kanoclip.cli.flags import Command, Parsed, Section
from kanoclip.errors import ConfigError
from kanoclip.options import option

DEFAULT_SERVER = "http://127.0.0.1:8000"
POLL_S = 1.0  # `adapt --wait` asks for the job this often
SAY_EVERY_S = 5.0  # and prints its progress at most this often


@dataclass(frozen=True, kw_only=True)
class ServerOptions:
    """Where the station subcommands that act on a running `kanoclip serve` find it: one section, in each of them."""

    server: str = option(DEFAULT_SERVER, metavar="URL", help="the running `kanoclip serve`")
    api_key_file: str | None = option(None, metavar="FILE", help="its API key (or env KANOCLIP_API_KEY)")


SERVER = Section("server", ServerOptions, title="server")


class StationClient:
    """A running `kanoclip serve`: each call returns the answer's JSON, or raises a ConfigError that says why there
    is none (the server unreachable, or its `detail` for a refusal)."""

    def __init__(self, o: ServerOptions) -> None:
        import httpx

        if not o.server.startswith(("http://", "https://")):
            raise ConfigError(f"--server {o.server}: give the station's URL, e.g. {DEFAULT_SERVER}")
        self.url = o.server.rstrip("/")
        key = read_key(o.api_key_file)
        self.http = httpx.Client(timeout=300, headers={"X-API-Key": key} if key else {})
        # what the hints printed here add to a command, so they name the same server
        self.again = "" if self.url == DEFAULT_SERVER else f" --server {self.url}"

    def __call__(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self.http.request(method, self.url + path, **kwargs)
        except (httpx.HTTPError, httpx.InvalidURL) as e:
            raise ConfigError(f"cannot reach the station at {self.url}: {e}; is `kanoclip serve` running?") from e
        if response.status_code >= 400:
            raise ConfigError(f"{self.url}: HTTP {response.status_code}: {server_detail(response)}")
        try:
            return response.json()
        except ValueError as e:
            raise ConfigError(f"{self.url}{path} did not answer JSON: is it a `kanoclip serve`?") from e


def over_http(run: Callable[[Parsed, StationClient], int]) -> Callable[[Parsed], int]:
    """A station subcommand that talks to the --server: given its client, closed when the command ends."""

    def command(parsed: Parsed) -> int:
        client = StationClient(parsed.get(ServerOptions))
        try:
            return run(parsed, client)
        finally:
            client.http.close()

    return command


def server_detail(response: Any) -> str:
    """A refusal as the server says it: its `detail`, and for a request it found invalid, each field (as the flag
    that sets it) with what was wrong."""
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        return str(response.text[:300])
    if isinstance(detail, list):
        said = []
        for d in detail:
            where = [str(x) for x in d.get("loc", ()) if x != "body"]
            said.append(f"{'--' + where[0].replace('_', '-') if where else 'the request'}: {d.get('msg', d)}")
        return "; ".join(said)
    return str(detail)


def profile_path(name: str) -> str:
    from urllib.parse import quote

    return f"/v1/profiles/{quote(name, safe='')}"


def when(epoch: float | None) -> str:
    import datetime as dt

    return "-" if epoch is None else dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def shown(value: float | None, places: int = 3) -> str:
    """A number as the server gave it, rounded for reading as the station's page rounds it (JavaScript's toFixed:
    a half of the exact value away from zero, so 0.8125 is 0.813 in both); none (one class only, no threshold): `-`."""
    from decimal import ROUND_HALF_UP, Decimal

    return "-" if value is None else str(Decimal(value).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))


def numbers_lines(numbers: dict[str, Any]) -> list[str]:
    """A version's shadow evaluation: the new model beside the current one, on the same labelled results."""
    new, current = numbers["new"], numbers.get("current") or {}
    lines = [f"measured on {new['rows']} labelled result(s): {new['good']} good, {new['defect']} defect"]
    if not new["rows"]:
        lines.append("  (no verdicts yet: mark results good or defect, then adapt again to measure a version)")
    lines.append(f"  {'':<12} {'new':>11} {'current':>11}")
    for label, key, places in (
        ("image AUROC", "image_auroc", 3),
        ("F1", "f1", 3),
        ("precision", "precision", 3),
        ("recall", "recall", 3),
        ("threshold", "threshold", 4),
    ):
        lines.append(f"  {label:<12} {shown(new.get(key), places):>11} {shown(current.get(key), places):>11}")

    def counts(n: dict[str, Any]) -> str:
        return "-" if n.get("tp") is None else f"{n['tp']}/{n['fp']}/{n['fn']}/{n['tn']}"

    lines.append(f"  {'tp/fp/fn/tn':<12} {counts(new):>11} {counts(current):>11}")
    return lines


@dataclass(frozen=True, kw_only=True)
class AdaptJobOptions:
    profile: str = option(positional=True, metavar="PROFILE", help="the profile whose model to adapt")
    max_steps: int | None = option(None, metavar="N", help="training steps (default: the server's, the paper's recipe)")
    synth: str | None = option(
        None, metavar="KINDS", help="the synthesized defects, comma-separated: cutpaste, scar, perlin (default: all)"
    )
    val_fraction: float | None = option(
        None, metavar="F", help="good parts held out to pick the best step (default: the server's)"
    )
    seed: int | None = option(None, metavar="S", help="the job's random seed (default: the server's)")
    wait: bool = option(False, help="follow the job to its end and print the new version's numbers")


@over_http
def adapt_job_command(parsed: Parsed, client: StationClient) -> int:
    o = parsed.get(AdaptJobOptions)
    given = {"max_steps": o.max_steps, "val_fraction": o.val_fraction, "seed": o.seed}
    body: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if o.synth is not None:
        body["synth"] = [k.strip() for k in o.synth.split(",") if k.strip()]
    job = client("POST", f"{profile_path(o.profile)}/adapt", json=body)
    print(f"job {job['id']}: adapting profile {o.profile!r} at {client.url}", flush=True)
    if not o.wait:
        print(
            f"follow it with `kanoclip station jobs {o.profile}{client.again}`; stop it with "
            f"`kanoclip station cancel {job['id']}{client.again}`"
        )
        return 0
    return job_ended(client, o.profile, follow(client, job))


def progress_line(job: dict[str, Any]) -> str:
    steps = f": step {job['step']}/{job['steps']} ({job['progress']:.0%})" if job.get("steps") else ""
    return f"  {job['phase']}{steps}"


def follow(client: StationClient, job: dict[str, Any]) -> dict[str, Any]:
    """The job once it has ended, its progress printed meanwhile (when it moved, at most every SAY_EVERY_S)."""
    said: tuple[Any, ...] | None = None
    last = -math.inf
    try:
        while job["state"] == "running":
            now, seen = time.monotonic(), (job["phase"], job["step"])
            if seen != said and now - last >= SAY_EVERY_S:
                print(progress_line(job), flush=True)
                said, last = seen, now
            time.sleep(POLL_S)
            job = client("GET", job["url"])
    except KeyboardInterrupt:
        print(
            f"kanoclip: job {job['id']} goes on in the server: `kanoclip station cancel {job['id']}{client.again}` "
            "stops it",
            file=sys.stderr,
        )
        raise
    return job


def job_ended(client: StationClient, profile: str, job: dict[str, Any]) -> int:
    """What an ended job made: its version's numbers (0), or why it made none and its log's tail (1)."""
    if job["state"] != "done":
        print(f"job {job['id']} {job['state']}: {job.get('error') or 'no reason given'}", file=sys.stderr)
        for line in job.get("log") or []:
            print(f"  | {line}", file=sys.stderr)
        return 1
    number = job["version"]
    listing = client("GET", f"{profile_path(profile)}/models")
    version = next((v for v in listing["versions"] if v["version"] == number), None)
    if version is None:  # pruned already (--keep-versions), or the profile went
        print(f"job {job['id']} done: model version {number}, no longer kept")
        return 0
    print(f"job {job['id']} done: model version {number} of profile {profile!r}")
    for line in numbers_lines(version["numbers"]):
        print(line)
    if not version["current"]:
        print(f"not used until promoted: kanoclip station promote {profile} {number}{client.again}")
    return 0


@dataclass(frozen=True, kw_only=True)
class JobsOptions:
    profile: str | None = option(None, positional=True, metavar="PROFILE", help="one profile's jobs (default: all)")


@over_http
def jobs_command(parsed: Parsed, client: StationClient) -> int:
    o = parsed.get(JobsOptions)
    jobs = client("GET", "/v1/jobs", params={"profile": o.profile} if o.profile else {})["jobs"]
    if not jobs:
        print("no jobs" + (f" for profile {o.profile!r}" if o.profile else ""))
        return 0
    print(f"{'job':<32}  {'profile':<16} {'state':<9} {'phase':<10} {'step':>11}  {'created (UTC)':<19}  made")
    for j in jobs:
        step = f"{j['step']}/{j['steps']}" if j.get("steps") else str(j["step"])
        phase = "-" if j["state"] == "done" else j["phase"]  # where a job that did not finish stopped
        made = f"version {j['version']}" if j.get("version") is not None else (j.get("error") or "")
        print(
            f"{j['id']:<32}  {j['profile']:<16} {j['state']:<9} {phase:<10} {step:>11}  "
            f"{when(j['created_at']):<19}  {made}"
        )
    return 0


@dataclass(frozen=True, kw_only=True)
class CancelOptions:
    job_id: str = option(positional=True, metavar="JOB_ID", help="the job (`kanoclip station jobs` lists them)")


@over_http
def cancel_command(parsed: Parsed, client: StationClient) -> int:
    from urllib.parse import quote

    o = parsed.get(CancelOptions)
    job = client("DELETE", f"/v1/jobs/{quote(o.job_id, safe='')}")
    print(f"job {job['id']} ({job['profile']}): {job['state']}")
    return 0


@dataclass(frozen=True, kw_only=True)
class ProfileArgument:
    profile: str = option(positional=True, metavar="PROFILE", help="the station's profile")


@over_http
def models_command(parsed: Parsed, client: StationClient) -> int:
    o = parsed.get(ProfileArgument)
    listing = client("GET", f"{profile_path(o.profile)}/models")
    current = listing["current"]
    print(
        f"profile {o.profile!r}: "
        + (f"model version {current} is current" if current is not None else "no model version is current")
        + f"; {listing['rollback']} promote(s) can be rolled back"
    )
    if not listing["versions"]:
        print(f"no model versions yet: kanoclip station adapt {o.profile}{client.again}")
        return 0
    head = f"{'AUROC new':>9} {'current':>8}  {'F1 new':>7} {'current':>8}"
    print(f"{'version':>7}    {'created (UTC)':<19}  {'rows':>5}  {head}")
    for v in listing["versions"]:
        new, cur = v["numbers"]["new"], v["numbers"].get("current") or {}
        mark = "*" if v["current"] else " "
        print(
            f"{v['version']:>7} {mark}  {when(v['created_at']):<19}  {new['rows']:>5}  "
            f"{shown(new.get('image_auroc')):>9} {shown(cur.get('image_auroc')):>8}  "
            f"{shown(new.get('f1')):>7} {shown(cur.get('f1')):>8}"
        )
    print("* current; AUROC and F1 on the profile's labelled results, the new model beside the one current then")
    return 0


@dataclass(frozen=True, kw_only=True)
class PromoteOptions:
    profile: str = option(positional=True, metavar="PROFILE", help="the station's profile")
    version: str = option(positional=True, metavar="VERSION", help="its model version (`kanoclip station models`)")


@over_http
def promote_command(parsed: Parsed, client: StationClient) -> int:
    o = parsed.get(PromoteOptions)
    if not (o.version.isascii() and o.version.isdigit()):
        raise ConfigError(f"VERSION is a version number (`kanoclip station models {o.profile}`), got {o.version!r}")
    p = client("POST", f"{profile_path(o.profile)}/models/{o.version}/promote")
    threshold = shown(p["thresholds"]["image_threshold"], 4)
    print(f"profile {o.profile!r}: model version {p['model_version']} is current, threshold {threshold}")
    print(f"undo with: kanoclip station rollback {o.profile}{client.again}")
    return 0


@over_http
def rollback_command(parsed: Parsed, client: StationClient) -> int:
    o = parsed.get(ProfileArgument)
    p = client("POST", f"{profile_path(o.profile)}/rollback")
    model = f"model version {p['model_version']}" if p["model_version"] is not None else "the model it started with"
    print(f"profile {o.profile!r}: back to {model}, threshold {shown(p['thresholds']['image_threshold'], 4)}")
    return 0


REMOTE = """
these talk to a running `kanoclip serve` (--server, default http://127.0.0.1:8000; --api-key-file or env
KANOCLIP_API_KEY when it asks for a key); exit status 2 when it cannot be reached or refuses, with its reason.
"""

ADAPT_JOB_EPILOG = (
    """examples:
  kanoclip station adapt default --max-steps 50 --wait    adapt, follow it, then print the new version's numbers
  kanoclip station adapt bottle --synth cutpaste,perlin --server http://inspect.local:8000 --api-key-file key

a job in a worker process beside the server, from the profile's good parts (references and results marked good);
the new model becomes a version of the profile, measured on its labelled results, and is used only once promoted.
with --wait, exit status 1 when the job failed or was cancelled (its error and log tail are printed).
"""
    + REMOTE
)

JOBS_EPILOG = (
    """examples:
  kanoclip station jobs                                  the newest jobs of every profile
  kanoclip station jobs bottle --server http://inspect.local:8000
"""
    + REMOTE
)

CANCEL_EPILOG = (
    """examples:
  kanoclip station cancel 3f2a9c0d1e4b4f6a8b7c6d5e4f3a2b1c   its worker stops and what it wrote is removed
"""
    + REMOTE
)

MODELS_EPILOG = (
    """examples:
  kanoclip station models default                         versions, newest first; * marks the current one
  kanoclip station models bottle --server http://inspect.local:8000 --api-key-file key
"""
    + REMOTE
)

PROMOTE_EPILOG = (
    """examples:
  kanoclip station promote default 3                      version 3 and its calibrated thresholds, from the next part
"""
    + REMOTE
)

ROLLBACK_EPILOG = (
    """examples:
  kanoclip station rollback default                       the model, version and thresholds the last promote replaced
"""
    + REMOTE
)


API_COMMANDS = (
    Command(
        "adapt",
        "adapt a profile's model to its good parts, as a job of a running server",
        adapt_job_command,
        (Section("adapt", AdaptJobOptions), SERVER),
        ADAPT_JOB_EPILOG,
    ),
    Command("jobs", "a running server's adapt jobs", jobs_command, (Section("jobs", JobsOptions), SERVER), JOBS_EPILOG),
    Command(
        "cancel", "cancel a running job", cancel_command, (Section("cancel", CancelOptions), SERVER), CANCEL_EPILOG
    ),
    Command(
        "models",
        "a profile's model versions, measured new against current",
        models_command,
        (Section("models", ProfileArgument), SERVER),
        MODELS_EPILOG,
    ),
    Command(
        "promote",
        "make a model version the profile's current model",
        promote_command,
        (Section("promote", PromoteOptions), SERVER),
        PROMOTE_EPILOG,
    ),
    Command(
        "rollback",
        "undo the profile's last promote",
        rollback_command,
        (Section("rollback", ProfileArgument), SERVER),
        ROLLBACK_EPILOG,
    ),
)
