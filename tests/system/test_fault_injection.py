"""kill -9 at random points during detect, verdicts, calibrate, retention and bank saves, on SQLite and PostgreSQL
(#30's fault injection): after each kill the station opens again, `station check` finds no row naming a missing
file, and the history, verdicts, bank and thresholds hold everything acknowledged, once.

A worker process drives the real app (TestClient) on the state and reports each operation's start and its
acknowledgement through a pipe: a write() that returned survives the SIGKILL, so the pipe is the journal. Workers
are forked from a forkserver that imported torch and kanoclip once (a restart costs the station's start only, and
no fork inherits the test process's threads). The parent picks a kind, waits for the worker to start one and kills
it at a random point of it: anywhere in its duration, or (two kills in three) within 4 ms of one of its commits
beginning, where a crash splits what must stay together or loses what was committed and not yet answered. Then it
restarts: opens the station, runs the check and compares the state with a model of what was acknowledged. Each
component's rule says what the one operation in flight may leave: a result with its files or nothing (`results`),
a verdict with its bank change or neither (`teaching`, `banks`), the oldest rows of a prune and no others
(`retention`), one row per claimed file once the next start sends it again as `watch` does (`claims`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import random
import subprocess
import sys
import time
import traceback
import uuid
import warnings
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageOps
from sqlalchemy import Engine, event, func, select

from kanoclip.model.references import ReferenceBank
from kanoclip.station import db
from kanoclip.station.check import check
from kanoclip.station.station import Station
from kanoclip.station.store import BlobStore
from tests.support.postgres import throwaway_cluster
from tests.support.station import base_run, ok, station_client

pytestmark = pytest.mark.slow  # worker processes killed and restarted, and a PostgreSQL cluster

REPO = Path(__file__).resolve().parents[2]
SEED = int(os.environ.get("KANOCLIP_FAULT_SEED", "30"))
KINDS = ("detect", "verdict", "calibrate", "prune", "bank")
WEIGHTS = (3, 3, 1, 1, 1)  # between the kinds aimed at: enough results and verdicts for the others to work on
FIRST_GUESS_S = {"detect": 0.08, "verdict": 0.05, "calibrate": 0.15, "prune": 0.03, "bank": 0.05}
AT_COMMIT = 2 / 3  # the share of kills aimed just after a commit of the operation began (the rest: anywhere in it)
COMMIT_WINDOW_S = 0.004  # how long after: within a commit (its fsync) or between it and the answer
CLAIM_TIMEOUT_S = 0.5  # a killed worker's claim is taken over this long after it was made
PROFILE = "default"


# -- the worker -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Orders:
    """One worker's run: where the state is, its images, and the kind of operation the parent will kill it in."""

    state: Path
    url: str | None
    images: tuple[Path, ...]
    run: int
    seed: int
    target: str
    retry: dict[str, Any] | None  # the keyed detect killed last run: sent again first, as `watch` does at start


class Worker:
    """The operations, each reported as begun, then as acknowledged once the app answered it."""

    def __init__(self, orders: Orders, client: Any, journal: Connection) -> None:
        self.o, self.c, self.journal = orders, client, journal
        self.station: Station = client.app.state.station
        self.rng = random.Random(f"{orders.seed}-{orders.run}")
        self.images = [p.read_bytes() for p in orders.images]
        self.holder = uuid.uuid4().hex  # one per process, as `watch --server` sends
        self.ops, self.began, self.commits = 0, None, 0
        # One instance doing one thing at a time: no request in flight or reader of an old row needs a file once
        # nothing names it, so retention and a replaced bank's retirement delete at once, within the kill's reach.
        assert self.station.store is not None
        self.station.store.grace_s = 0.0
        event.listen(self.station.engine, "commit", self.committing)

    def say(self, **line: Any) -> None:
        self.journal.send_bytes(json.dumps(line).encode())  # one write() under PIPE_BUF: whole or not at all

    def begin(self, **line: Any) -> None:
        self.commits, self.began = 0, time.monotonic()
        self.say(ev="begin", **line)

    def committing(self, _: object) -> None:
        """A transaction of the operation is about to commit: the parent may aim its kill just after."""
        if self.began is not None:
            self.commits += 1
            self.say(ev="commit", n=self.commits)

    def ack(self, **line: Any) -> None:
        """Acknowledged, with how long it took and how many transactions it committed."""
        assert self.began is not None
        took, self.began = time.monotonic() - self.began, None
        self.say(ev="ack", took=round(took, 4), commits=self.commits, **line)

    def tag(self) -> str:
        self.ops += 1
        return f"r{self.o.run}o{self.ops}"

    def detect(self, retry: dict[str, Any] | None = None) -> None:
        if retry is None:
            tag, image = self.tag(), self.rng.randrange(len(self.images))
            keyed, source = self.rng.random() < 0.5, f"{tag}-{image}.png"
        else:
            tag, image, keyed, source = retry["tag"], retry["image"], True, retry["source"]
        data = self.images[image]
        sha = hashlib.sha256(data).hexdigest()
        self.begin(op="detect", tag=tag, source=source, sha=sha, image=image, keyed=keyed, retry=bool(retry))
        upload = [("files", (source, data))]
        if not keyed:
            answer = ok(self.c.post("/v1/detect", files=upload))
        else:
            key = hashlib.sha256(source.encode()).hexdigest()
            params = {"source_key": key, "holder": self.holder, "claim_timeout_s": CLAIM_TIMEOUT_S}
            deadline = time.monotonic() + 10 * CLAIM_TIMEOUT_S + 10
            while True:
                response = self.c.post(f"/v1/profiles/{PROFILE}/detect", params=params, files=upload)
                if response.status_code != 409 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)  # the killed worker's claim is fresh: taken over once CLAIM_TIMEOUT_S has passed
            answer = ok(response)
        self.ack(op="detect", tag=tag, id=answer["results"][0]["result_id"])

    def rows(self) -> list[dict[str, Any]]:
        return list(ok(self.c.get("/v1/results", params={"limit": 1000}))["results"])

    def verdict(self) -> None:
        rows = self.rows()
        if not rows:
            self.detect()  # something to give a verdict on, then the verdict
            rows = self.rows()
        row, tag = self.rng.choice(rows), self.tag()
        verdict = "good" if self.rng.random() < 0.6 else "defect"
        self.begin(op="verdict", tag=tag, id=row["id"], sha=row["image_sha256"], verdict=verdict)
        ok(self.c.post(f"/v1/results/{row['id']}/feedback", json={"verdict": verdict, "note": tag}))
        self.ack(op="verdict", tag=tag)

    def bank(self) -> None:
        """Two good parts saved into the bank, one of them new to it when there is one."""
        held = set(ok(self.c.get("/v1/references"))["sha256"])
        new = [i for i, data in enumerate(self.images) if hashlib.sha256(data).hexdigest() not in held]
        first = self.rng.choice(new or range(len(self.images)))
        tag, picked = self.tag(), [first, self.rng.choice([i for i in range(len(self.images)) if i != first])]
        parts = [(f"{tag}-{i}.png", self.images[i]) for i in picked]
        shas = [hashlib.sha256(data).hexdigest() for _, data in parts]
        self.begin(op="bank", tag=tag, shas=shas)
        ok(self.c.post("/v1/references", files=[("files", part) for part in parts]))
        self.ack(op="bank", tag=tag)

    def calibrate(self) -> None:
        if ok(self.c.get("/v1/references"))["images"] < 2:
            self.bank()  # calibration needs two good parts: a 409 would be no calibrate at all
        tag = self.tag()
        self.begin(op="calibrate", tag=tag)
        answer = ok(self.c.post(f"/v1/profiles/{PROFILE}/calibrate", json={}))
        self.ack(op="calibrate", tag=tag, image_threshold=answer["image_threshold"])

    def prune(self) -> None:
        """`--max-store-gb` set to prune the k oldest results, a row per transaction, then their files."""
        assert self.station.engine is not None and self.station.store is not None
        r = db.results.c
        while True:
            with self.station.engine.connect() as c:
                held = [(row.id, row.stored_bytes) for row in c.execute(select(r.id, r.stored_bytes).order_by(r.id))]
            if len(held) >= 3:
                break
            self.detect()  # a prune that keeps the newest results needs a few
        k, tag = self.rng.randint(1, min(3, len(held) - 2)), self.tag()
        self.begin(op="prune", tag=tag, doomed=[i for i, _ in held[:k]])
        removed = self.station.prune(None, sum(b for _, b in held[k:]), step=1)
        self.ack(op="prune", tag=tag, removed=removed)

    def run(self) -> None:
        if self.o.retry is not None:
            self.detect(self.o.retry)
        for _ in range(self.rng.randint(0, 2)):
            getattr(self, self.rng.choices(KINDS, WEIGHTS)[0])()
        for _ in range(12):  # the kind aimed at every other operation: a kill that came too late aims at the next
            getattr(self, self.o.target)()
            getattr(self, self.rng.choices(KINDS, WEIGHTS)[0])()
        self.say(ev="done")


def _work(orders: Orders, journal: Connection) -> None:
    """The worker process: runs until killed (or says why it stopped)."""
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    try:
        with station_client(orders.state, orders.url) as client:
            journal.send_bytes(json.dumps({"ev": "ready"}).encode())
            Worker(orders, client, journal).run()
            time.sleep(120)  # the parent kills it; a worker left alone ends in its own time
    except BaseException:
        journal.send_bytes(json.dumps({"ev": "error", "detail": traceback.format_exc()[-3000:]}).encode())


# -- the parent: what was acknowledged, and what the state must hold --------------------------------------------------
@dataclass
class Observed:
    """The state as a restarted station finds it."""

    results: dict[int, tuple[str, str]]  # id -> (source, image sha256)
    sources: list[str]
    notes: list[tuple[str | None, int]]  # feedback: (note, result id)
    bank: set[str]  # the profile's good parts (profile_references)
    bank_file: list[str] | None  # the parts the profile's bank file lists (None: no bank file)
    threshold: float | None
    dangling_rows: list[str]  # claims or verdicts naming a missing result, parts of a missing profile


def observe(engine: Engine, store: BlobStore) -> Observed:
    r, f, c_, refs = db.results.c, db.feedback.c, db.claims.c, db.references.c
    with engine.connect() as c:
        rows = list(c.execute(select(r.id, r.source, r.image_sha256)))
        notes = [(row.note, row.result_id) for row in c.execute(select(f.note, f.result_id))]
        bank = {sha for (sha,) in c.execute(select(refs.sha256).where(refs.profile == PROFILE))}
        profile = c.execute(select(db.profiles).where(db.profiles.c.name == PROFILE)).one()
        dangling = [
            f"claim {key} names missing result {rid}"
            for key, rid in c.execute(
                select(c_.key, c_.result_id).where(c_.result_id.is_not(None), c_.result_id.not_in(select(r.id)))
            )
        ]
        dangling += [
            f"verdict {fid} names missing result {rid}"
            for fid, rid in c.execute(select(f.id, f.result_id).where(f.result_id.not_in(select(r.id))))
        ]
        orphan_parts = c.execute(
            select(func.count()).where(refs.profile.not_in(select(db.profiles.c.name)))
        ).scalar_one()
        dangling += [f"{orphan_parts} good part(s) of a missing profile"] if orphan_parts else []
    bank_file = None
    if profile.bank_sha256 is not None:
        bank_file = [s["sha256"] for s in ReferenceBank.load(store.path(profile.bank_sha256)).sources]
    return Observed(
        results={row.id: (row.source, row.image_sha256) for row in rows},
        sources=[row.source for row in rows],
        notes=notes,
        bank=bank,
        bank_file=bank_file,
        threshold=profile.thresholds.get("image_threshold"),
        dangling_rows=dangling,
    )


@dataclass
class Model:
    """What the acknowledged operations promise, with the one operation in flight at each kill resolved by what the
    restarted station holds (it may have taken effect or not, but wholly or not at all)."""

    results: dict[int, tuple[str, str]] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)  # the verdicts kept (by their note), on results kept
    bank: set[str] = field(default_factory=set)
    threshold: float | None = None
    threshold_known: bool = False  # False until the first restart reads the profile's as created
    retry: dict[str, Any] | None = None

    def acknowledged(self, begun: dict[str, Any], ack: dict[str, Any]) -> None:
        op = begun["op"]
        if op == "detect":
            rid = int(ack["id"])
            known = [i for i, (source, _) in self.results.items() if source == begun["source"]]
            assert known in ([], [rid]), f"{begun['source']} answered as result {rid}, recorded as {known}"
            self.results[rid] = (begun["source"], begun["sha"])
            if begun["retry"]:
                self.retry = None
        elif op == "verdict":
            self._verdict(begun)
        elif op == "bank":
            self.bank |= set(begun["shas"])
        elif op == "calibrate":
            self.threshold, self.threshold_known = ack["image_threshold"], True
        elif op == "prune":
            assert ack["removed"] == len(begun["doomed"]), f"a prune acknowledged {ack['removed']} of {begun}"
            self._pruned(begun["doomed"])

    def _verdict(self, begun: dict[str, Any]) -> None:
        self.notes[begun["tag"]] = begun["id"]
        if begun["verdict"] == "good":
            self.bank.add(begun["sha"])
        else:
            self.bank.discard(begun["sha"])

    def _pruned(self, ids: list[int]) -> None:
        for rid in ids:
            self.results.pop(rid, None)
        self.notes = {note: rid for note, rid in self.notes.items() if rid not in ids}

    def in_flight(self, begun: dict[str, Any], seen: Observed) -> str:
        """Resolve the operation the kill interrupted from what the station holds; what it left, in words."""
        op = begun["op"]
        if op == "detect":
            rows = [i for i, (source, _) in seen.results.items() if source == begun["source"]]
            assert len(rows) <= 1, f"{begun['source']} recorded {len(rows)} times"
            if rows:
                self.results[rows[0]] = (begun["source"], begun["sha"])
            if begun["keyed"]:
                self.retry = {k: begun[k] for k in ("tag", "image", "source")}
            return "recorded" if rows else "not recorded"
        if op == "verdict":
            moves = ", with its bank change" if (begun["verdict"] == "good") != (begun["sha"] in self.bank) else ""
            if any(note == begun["tag"] for note, _ in seen.notes):
                self._verdict(begun)
                return "taken" + moves
            return "not taken" + moves
        if op == "bank":
            added = self.bank | set(begun["shas"])
            assert seen.bank in (self.bank, added), f"bank {sorted(seen.bank)}: neither before nor after {begun}"
            if added == self.bank:
                return "nothing new to save"
            self.bank = seen.bank
            return "saved" if seen.bank == added else "not saved"
        if op == "calibrate":
            changed = seen.threshold != self.threshold
            self.threshold, self.threshold_known = seen.threshold, True
            return "set" if changed else "not set"
        assert op == "prune"
        gone = [rid for rid in begun["doomed"] if rid not in seen.results]
        assert gone == begun["doomed"][: len(gone)], f"a prune killed in flight removed {gone} of {begun['doomed']}"
        self._pruned(gone)
        return f"{len(gone)} of {len(begun['doomed'])} pruned"

    def assert_holds(self, seen: Observed, where: str) -> None:
        """Nothing acknowledged lost, nothing duplicated, no dangling row."""
        assert not seen.dangling_rows, f"{where}: {seen.dangling_rows}"
        twice = sorted({s for s in seen.sources if seen.sources.count(s) > 1})
        assert not twice, f"{where}: recorded more than once: {twice}"
        lost = {i: v for i, v in self.results.items() if seen.results.get(i) != v}
        assert not lost, f"{where}: acknowledged results lost or changed: {lost}"
        extra = {i: v for i, v in seen.results.items() if i not in self.results}
        assert not extra, f"{where}: results nobody was answered or left in flight: {extra}"
        notes = sorted((note or "", rid) for note, rid in seen.notes)
        assert notes == sorted(self.notes.items()), f"{where}: verdicts {notes}, acknowledged {self.notes}"
        assert seen.bank == self.bank, f"{where}: good parts {sorted(seen.bank)}, acknowledged {sorted(self.bank)}"
        listed = seen.bank_file or []
        assert sorted(listed) == sorted(seen.bank), f"{where}: the bank file lists {listed}, the parts {seen.bank}"
        assert seen.threshold == self.threshold, f"{where}: threshold {seen.threshold}, calibrated {self.threshold}"


def images(folder: Path) -> tuple[Path, ...]:
    """Six different parts: the examples' four and two mirrored (a good part may come back as another result)."""
    folder.mkdir()
    parts = sorted((REPO / "examples/parts").rglob("*.png"))
    out = []
    for i, path in enumerate([*parts, *parts[:2]]):
        image = Image.open(path).convert("RGB")
        image = ImageOps.mirror(image) if i >= len(parts) else image
        out.append(folder / f"part{i}.png")
        image.save(out[-1])
    return tuple(out)


def wait_for_backends_gone(url: str) -> None:
    """PostgreSQL's sessions of the killed worker ended: a COMMIT it sent is then done or undone for good."""
    import psycopg
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    connection = f"host={parsed.host} port={parsed.port} user={parsed.username} dbname=postgres"
    deadline = time.monotonic() + 20
    with psycopg.connect(connection, autocommit=True) as c:
        while True:
            row = c.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (parsed.database,)).fetchone()
            if row is not None and row[0] == 0:
                return
            assert time.monotonic() < deadline, "the killed worker's PostgreSQL sessions did not end within 20 s"
            time.sleep(0.02)


@dataclass
class Campaign:
    """Runs of one state: start a worker, kill it in the kind asked, restart, check."""

    state: Path
    url: str | None
    images: tuple[Path, ...]
    seed: int
    model: Model = field(default_factory=Model)
    timings: dict[str, tuple[float, int]] = field(default_factory=dict)  # kind -> last (duration, commits)
    killed_in: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in KINDS})
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def target(self) -> str:
        """The kind with the fewest kills in flight so far (each kind is hit even when a kill lands between)."""
        fewest = min(len(v) for v in self.killed_in.values())
        return self.rng.choice([k for k in KINDS if len(self.killed_in[k]) == fewest])

    def aim(self, kind: str) -> tuple[int, float]:
        """Where to kill once a `kind` began: just after its n-th commit began (a crash there splits what must stay
        together, or loses what was committed but not yet answered), or anywhere in its duration (n = 0)."""
        took, commits = self.timings.get(kind, (FIRST_GUESS_S[kind], 1))
        if commits and self.rng.random() < AT_COMMIT:
            return self.rng.randint(1, commits), self.rng.uniform(0.0, COMMIT_WINDOW_S)
        return 0, self.rng.uniform(0.0, took)

    def kill_run(self, ctx: Any, run: int) -> None:
        target = self.target()
        where = f"seed {self.seed}, run {run}, aiming at {target}"
        orders = Orders(self.state, self.url, self.images, run, self.seed, target, self.model.retry)
        receive, send = ctx.Pipe(duplex=False)
        worker = ctx.Process(target=_work, args=(orders, send), daemon=True)
        worker.start()
        send.close()
        lines: list[dict[str, Any]] = []
        deadline = time.monotonic() + 120

        def until(done: Any) -> None:
            """Read the journal until a line satisfies `done` (or the operation aimed at is over)."""
            while True:
                assert receive.poll(max(0.0, deadline - time.monotonic())), f"{where}: the worker stalled: {lines}"
                try:
                    line = json.loads(receive.recv_bytes())
                except EOFError:
                    raise AssertionError(f"{where}: the worker died (exit {worker.exitcode}): {lines}") from None
                lines.append(line)
                assert line["ev"] not in ("error", "done"), f"{where}: the worker stopped: {line}"
                if done(line):
                    return

        try:
            while True:
                until(lambda line: line["ev"] == "begin" and line["op"] == target and not line.get("retry"))
                nth, delay = self.aim(target)
                if not nth:
                    break
                until(lambda line, n=nth: line["ev"] == "ack" or (line["ev"] == "commit" and line["n"] == n))
                if lines[-1]["ev"] == "commit":
                    break  # else it committed fewer times than the last one: aim at the next
            time.sleep(delay)
        finally:
            worker.kill()
            worker.join(timeout=30)
        assert worker.exitcode == -9, f"{where}: the worker ended with {worker.exitcode}, not by the kill"
        while receive.poll(0):
            try:
                lines.append(json.loads(receive.recv_bytes()))
            except EOFError:
                break
        receive.close()
        self.timings |= {line["op"]: (line["took"], line["commits"]) for line in lines if line["ev"] == "ack"}
        self.restart_and_check(lines, where)

    def restart_and_check(self, lines: list[dict[str, Any]], where: str) -> None:
        open_ops: dict[str, dict[str, Any]] = {}
        for line in lines:
            if line["ev"] == "begin":
                open_ops[line["tag"]] = line
            elif line["ev"] == "ack":
                self.model.acknowledged(open_ops.pop(line["tag"]), line)
        assert len(open_ops) <= 1, f"{where}: more than one operation in flight: {open_ops}"
        if self.url is not None:
            wait_for_backends_gone(self.url)
        station = Station.open(base_run(), self.state, self.url)  # the restart: it must open
        assert station.engine is not None and station.store is not None
        try:
            report = check(station.engine, station.store)
            assert not report.dangling, f"{where}: station check: {report.dangling} ({open_ops})"
            seen = observe(station.engine, station.store)
            assert report.rows == len(seen.results)
            for begun in open_ops.values():
                where += f", killed in {begun['op']} {begun['tag']}"
                try:
                    left = self.model.in_flight(begun, seen)
                except AssertionError as e:
                    raise AssertionError(f"{where}: {e}") from None
                self.killed_in[begun["op"]].append(left)
                where += f" ({left})"
            if not self.model.threshold_known:  # the profile as created: nothing calibrated it yet
                self.model.threshold, self.model.threshold_known = seen.threshold, True
            self.model.assert_holds(seen, where)
        finally:
            station.engine.dispose()

    def cli(self, *flags: str) -> str:
        command = [sys.executable, "-m", "kanoclip", "station", "check", str(self.state), *flags]
        command += ["--database", self.url] if self.url else []
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode in (0, 1), done.stderr
        assert f"{len(self.model.results)} result(s)" in done.stdout, done.stdout
        return f"{done.returncode}: {done.stdout.splitlines()[-1]}"

    def fix_with_the_cli(self) -> int:
        """The real `kanoclip station check` on the state the last kill left: nothing missing, and the files killed
        requests left (unnamed, or a put's temporary file) are orphans; once past the put grace, `--fix` removes
        every one and nothing acknowledged. Returns how many there were."""
        report = self.cli()
        orphans = int(report.split(", ")[1].split()[0])
        assert report == f"{int(orphans > 0)}: 0 missing file(s), {orphans} orphan file(s), 0 removed", report
        then = time.time() - 3600  # an hour later
        for path in (self.state / "blobs").rglob("*"):
            os.utime(path, (then, then))
        report = self.cli("--fix")
        assert report == f"0: 0 missing file(s), {orphans} orphan file(s), {orphans} removed", report
        assert not list((self.state / "blobs").glob("??/.*")), "a put's temporary file outlived --fix"
        station = Station.open(base_run(), self.state, self.url)
        assert station.engine is not None and station.store is not None
        try:
            self.model.assert_holds(observe(station.engine, station.store), "after station check --fix")
            after = check(station.engine, station.store)
            assert after.clean and not after.orphans and after.files > 0, after
        finally:
            station.engine.dispose()
        return orphans


@pytest.fixture(scope="module")
def forkserver() -> Any:
    """Workers forked from a process that imported this module (torch, kanoclip, the app) and nothing else."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


def campaign(ctx: Any, tmp_path: Path, url: str | None, runs: int, seed: int) -> Campaign:
    """`runs` kills, and more (5 at most) while a kind of operation has not been killed in flight yet."""
    c = Campaign(tmp_path / "state", url, images(tmp_path / "parts"), seed)
    run = 0
    while run < runs or (run < runs + 5 and not all(c.killed_in.values())):
        c.kill_run(ctx, run)
        run += 1
    unfinished = len(list((c.state / "blobs").glob("??/.*")))
    orphans = c.fix_with_the_cli()
    summary = {k: len(v) for k, v in c.killed_in.items()}
    print(
        f"{'sqlite' if url is None else 'postgresql'}: {run} kills, in flight: {summary}; {c.killed_in}; "
        f"{orphans} orphan file(s), {unfinished} of them unfinished puts, removed by --fix"
    )
    missed = [k for k, v in c.killed_in.items() if not v]
    assert not missed, f"seed {seed}: no kill landed during {missed} in {run} runs: {c.killed_in}"
    return c


@pytest.mark.timeout(300)
def test_kill_9_during_each_operation_on_sqlite_loses_and_duplicates_nothing(forkserver: Any, tmp_path: Path) -> None:
    campaign(forkserver, tmp_path, None, runs=20, seed=SEED)


@pytest.mark.timeout(300)
def test_kill_9_during_each_operation_on_postgresql_loses_and_duplicates_nothing(
    forkserver: Any, tmp_path: Path
) -> None:
    with throwaway_cluster() as cluster:
        campaign(forkserver, tmp_path, cluster.new_database(), runs=10, seed=SEED + 1)
