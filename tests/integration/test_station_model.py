"""The station against a plain model of what it promises (#30): a Hypothesis state machine drives the real station
behind its HTTP app, and a few dicts and sets beside it say what it was told. Rules: detect; verdicts good and
defect (repeated, reversed, old words); good parts added directly; calibrate; profiles created, deleted (and created
again), their class or model changed; claims taken, completed, expired and taken over, released, and completed by a
holder that lost them; a second instance on the same state; restart; retention by age and by bytes. Invariants,
checked after every step and derived from the model only: each acknowledged result is stored once (and its claim
names it), no row, part or bank names a missing file, each bank (its rows, its file and every instance's detector)
holds exactly the model's good parts, the disk holds the budget after retention, and no part is counted both ways.

The fast tier runs it here on SQLite; tests/system/test_station_model_pg.py runs the same machine on PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import mkdtemp
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import Engine, select, update

from kanoclip.data.images import decode
from kanoclip.model.references import ReferenceBank
from kanoclip.station import db
from kanoclip.station.check import check
from kanoclip.station.errors import NotFound
from kanoclip.station.results import Detection
from kanoclip.station.store import PUT_GRACE_S, BlobStore
from tests.support.station import files, ok, station_client

REPO = Path(__file__).resolve().parents[2]
IMAGES = sorted((REPO / "examples/parts").rglob("*.png"))  # 4 different parts
DATA = [p.read_bytes() for p in IMAGES]
SHA = [hashlib.sha256(d).hexdigest() for d in DATA]
PROFILES = ("default", "p1")  # default always exists: the servers' --profile, which cannot be deleted
PROFILE = st.sampled_from(PROFILES)
HOLDERS = ("watcher-a", "watcher-b")  # two watchers' holder ids
KEYS = [hashlib.sha256(f"file-{i}".encode()).hexdigest() for i in range(2)]  # watched file i is IMAGES[i]
BASE_SIZE = 112  # the image size of the servers' model flags (tests.conftest.TINY): each start sets it again
OTHER_SIZE = 98
EXPIRED = 1e-6  # a claim timeout every earlier claim is past: the rule that takes a claim over after it expired
FRESH = 300.0  # the watchers' default: a claim taken in this run is still fresh


@dataclass(frozen=True)
class Recorded:
    """An acknowledged result: the part it shows, the profile (and incarnation) it was recorded under, its bytes."""

    image: int
    profile: str
    incarnation: int
    size: int


@dataclass
class ProfileModel:
    """A profile as the model knows it: which incarnation (a new one after delete and create), its model's image
    size, and the parts its bank holds (last called good, or added as good parts)."""

    incarnation: int
    image_size: int
    good: set[int] = field(default_factory=set)


@dataclass
class ClaimModel:
    """A file's claim: who holds it, and the result that completed it once done."""

    holder: str
    result: int | None = None  # the result that completed it


@dataclass(frozen=True)
class Verdict:
    """A verdict as given, with what its result showed and where it was recorded (a pruned result takes it along)."""

    result: int
    image: int
    profile: str
    incarnation: int
    word: str


class StationModel(RuleBasedStateMachine):
    """The real station (behind its HTTP app, one or two instances on one state) beside a plain model of what it
    was told. `new_database` gives the state's database (None: the state folder's SQLite file).

    Rules that need something first (a result, a second instance) do nothing without it rather than take a
    precondition: Hypothesis enables a random subset of rules per example, and one whose enabled rules all fail
    their preconditions is thrown away, with the station it started."""

    engine: Engine  # the test's own look at the state (from `start`), beside the instances'
    store: BlobStore

    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(mkdtemp(prefix="station-model-"))
        self.state = self.folder / "state"
        self.url = self.new_database()
        self.first: Any = None
        self.second: Any = None
        self.stacks: dict[str, ExitStack] = {}
        self.incarnations = 0
        self.profiles: dict[str, ProfileModel] = {}
        self.results: dict[int, Recorded] = {}
        self.verdicts: list[Verdict] = []
        self.claims: dict[str, ClaimModel] = {}
        self.budget: int | None = None  # the byte budget of the last retention, until a result is added
        self.acted = False  # anything done through an instance since the last start or stop

    def new_database(self) -> str | None:
        return None

    # -- the instances ---------------------------------------------------------------------------------------------
    @initialize(two=st.booleans())
    def start(self, two: bool) -> None:
        """A station on a new state with the default profile and p1: one `serve`, or (`two`) two on the same state
        from the start."""
        self.profiles["default"] = ProfileModel(self._incarnation(), BASE_SIZE)
        self.first = self._open("first")
        ok(self.first.post("/v1/profiles", json={"name": "p1", "class_name": "bottle"}))
        self.profiles["p1"] = ProfileModel(self._incarnation(), BASE_SIZE)
        if two:
            self.second = self._open("second")
        self.engine = db.connect(self.url or db.database_url(self.state), upgrade=False)
        self.store = BlobStore(self.state)

    def _incarnation(self) -> int:
        self.incarnations += 1
        return self.incarnations

    def _open(self, which: str) -> Any:
        """An instance started as `serve --state` does: its model flags set the default profile's model again
        (its bank is rebuilt from the stored parts), and it follows others only when `_sync` says so."""
        self.stacks[which] = ExitStack()
        client = self.stacks[which].enter_context(station_client(self.state, self.url, poll_s=3600.0))
        self.profiles["default"].image_size = BASE_SIZE
        return client

    def _close(self, which: str) -> None:
        self.stacks.pop(which).close()

    def teardown(self) -> None:
        for which in list(self.stacks):
            self._close(which)
        if hasattr(self, "engine"):
            self.engine.dispose()
        shutil.rmtree(self.folder, ignore_errors=True)

    def instances(self) -> list[Any]:
        return [c for c in (self.first, self.second) if c is not None]

    def _via(self, data: st.DataObject) -> Any:
        """An instance to act through, caught up with the others' changes (its poll, as after `poll_s`)."""
        self.acted = True  # a start or stop after nothing happened would add nothing to look at
        which = data.draw(st.sampled_from(["first", "second"]), label="via") if self.second else "first"
        client = self.first if which == "first" else self.second
        self._sync(client)
        return client

    @staticmethod
    def _sync(client: Any) -> None:
        station = client.app.state.station
        client.portal.call(client.app.state.batcher.exclusive, station.changed_profiles)

    @staticmethod
    def _forward(client: Any, work: Any, *args: Any) -> Any:
        """`work` on the instance's forward thread, where serve conditions and runs its models."""
        return client.portal.call(client.app.state.batcher.exclusive, work, *args)

    @rule(event=st.sampled_from(["restart", "second instance starts or stops"]))
    def process(self, event: str) -> None:
        """The first process ends and starts again on the same state; or another `serve` starts on the same state
        (and database), or the one running stops. (Not again before anything happened: that adds nothing.)"""
        if not self.acted:
            return
        if event == "restart":
            self._close("first")
            self.first = self._open("first")
        elif self.second is None:
            self.second = self._open("second")
        else:
            self._close("second")
            self.second = None
        self.acted = False

    # -- detect and verdicts ---------------------------------------------------------------------------------------
    @rule(data=st.data())
    def detect(self, data: st.DataObject) -> None:
        """One request of several images (the same part may come twice): a result each, acknowledged by the 200.
        (Its one argument puts it first among the rules: Hypothesis then draws it most.)"""
        images = data.draw(st.lists(st.integers(0, len(IMAGES) - 1), min_size=1, max_size=4), label="images")
        name = data.draw(PROFILE, label="profile")
        client = self._via(data)
        response = client.post(f"/v1/profiles/{name}/detect", files=files([IMAGES[i] for i in images]))
        if name not in self.profiles:
            assert response.status_code == 404, response.text
            return
        answers = ok(response)["results"]
        assert len(answers) == len(images)
        for image, result in zip(images, answers, strict=True):
            self._acknowledged(result["result_id"], image, name, base64_len(result["overlay_png"]))

    def _acknowledged(self, result_id: int, image: int, name: str, overlay_bytes: int) -> None:
        """A result the station answered for: new, and its row's files as the answer gave them."""
        assert result_id not in self.results
        with self.engine.connect() as c:
            row = c.execute(select(db.results).where(db.results.c.id == result_id)).one()
        assert (row.image_sha256, row.profile) == (SHA[image], name)
        assert self.store.path(row.overlay_sha256).stat().st_size == overlay_bytes
        size = len(DATA[image]) + overlay_bytes + self.store.path(row.map_sha256).stat().st_size
        self.results[result_id] = Recorded(image, name, self.profiles[name].incarnation, size)
        self.budget = None

    def _teaches(self, result_id: int) -> ProfileModel | None:
        """The profile a verdict on this result teaches: the incarnation it was recorded under, if still there."""
        r = self.results[result_id]
        p = self.profiles.get(r.profile)
        return p if p is not None and p.incarnation == r.incarnation else None

    def _given(self, result_id: int, word: str) -> None:
        r = self.results[result_id]
        self.verdicts.append(Verdict(result_id, r.image, r.profile, r.incarnation, word))
        p = self._teaches(result_id)
        if p is not None:
            (p.good.add if word == "good" else p.good.discard)(r.image)

    @rule(data=st.data())
    def verdicts(self, data: st.DataObject) -> None:
        """An operator goes through a few results: good or defect (or the earlier words ok and ng), the same result
        again or reversed; each verdict replaces the earlier one on its part."""
        if not self.results:
            return
        word = st.sampled_from(["good", "defect", "ok", "ng"])
        given = data.draw(st.lists(st.tuples(st.sampled_from(sorted(self.results)), word), min_size=1, max_size=3))
        client = self._via(data)
        for result, verdict in given:
            ok(client.post(f"/v1/results/{result}/feedback", json={"verdict": verdict}))
            self._given(result, "good" if verdict in ("good", "ok") else "defect")
        if data.draw(st.booleans(), label="then calibrate"):
            self._calibrate(client, self.results[given[-1][0]].profile)

    @rule(data=st.data(), word=st.sampled_from(["good", "defect"]))
    def reversed_through_the_other_instance_within_a_poll(self, data: st.DataObject, word: str) -> None:
        """A verdict through one instance, then its reverse on the same result through the other before that one
        polled (two operators within `poll_s`): the reverse is recorded with its bank change, or refused with
        nothing recorded (409); never recorded beside a bank it did not change."""
        if not self.results or self.second is None:
            return
        result = data.draw(st.sampled_from(sorted(self.results)), label="result")
        order = data.draw(st.sampled_from([("first", "second"), ("second", "first")]), label="order")
        first, second = (self.first, self.second) if order[0] == "first" else (self.second, self.first)
        self._sync(first)
        self._sync(second)
        ok(first.post(f"/v1/results/{result}/feedback", json={"verdict": word}))
        self._given(result, word)
        reverse = "defect" if word == "good" else "good"
        response = second.post(f"/v1/results/{result}/feedback", json={"verdict": reverse})
        if response.status_code != 409:  # 409: the profile changed under it; refused, nothing recorded
            ok(response)
            self._given(result, reverse)

    @rule(data=st.data(), name=PROFILE)
    def add_good_parts(self, data: st.DataObject, name: str) -> None:
        """Good parts given directly (POST references), whatever verdicts said of them before: often one last
        called defect, which calibrate must then count as good only."""
        any_parts = st.sets(st.integers(0, len(IMAGES) - 1), min_size=1, max_size=3)
        called_defect = sorted(self._defects(name)) if name in self.profiles else []
        if called_defect:
            any_parts = st.sets(st.sampled_from(called_defect), min_size=1) | any_parts
        images = data.draw(any_parts, label="images")
        client = self._via(data)
        response = client.post(f"/v1/profiles/{name}/references", files=files([IMAGES[i] for i in sorted(images)]))
        if name not in self.profiles:
            assert response.status_code == 404, response.text
            return
        ok(response)
        self.profiles[name].good |= images
        if data.draw(st.booleans(), label="then calibrate"):
            self._calibrate(client, name)

    # -- calibrate -------------------------------------------------------------------------------------------------
    @rule(data=st.data(), name=PROFILE)
    def calibrate(self, data: st.DataObject, name: str) -> None:
        """Thresholds from the good parts (leave-one-out) and the kept results last called defect, counted only
        when the bank does not hold them: no part counted both ways. (Verdicts and good parts may end with it too,
        as an operator teaches and then calibrates.)"""
        self._calibrate(self._via(data), name)

    def _calibrate(self, client: Any, name: str) -> None:
        response = client.post(f"/v1/profiles/{name}/calibrate", json={"false_alarm_rate": 0.2})
        p = self.profiles.get(name)
        if p is None:
            assert response.status_code == 404, response.text
            return
        if len(p.good) < 2:
            assert response.status_code == 409, response.text
            return
        answer = ok(response)
        assert answer["good_parts"] == len(p.good)
        assert {part["sha256"] for part in answer["leave_one_out"]} == {SHA[i] for i in p.good}
        assert answer["defects"] == len(self._defects(name) - p.good)

    def _defects(self, name: str) -> set[int]:
        """The parts whose last verdict, among the profile's kept results, is defect (the bank may hold some)."""
        p, last = self.profiles[name], {}
        for v in self.verdicts:
            if v.result in self.results and (v.profile, v.incarnation) == (name, p.incarnation):
                last[v.image] = v.word
        return {image for image, word in last.items() if word == "defect"}

    # -- profiles --------------------------------------------------------------------------------------------------
    @rule(data=st.data(), name=PROFILE, action=st.sampled_from(["create", "delete", "delete and create again"]))
    def create_or_delete_profile(self, data: st.DataObject, name: str, action: str) -> None:
        """A profile created over HTTP, on the default profile's model, with no parts and no verdicts (one deleted
        before under this name leaves it nothing); or deleted with its parts (its results stay); or both, as one
        starts a product over. The default one cannot go."""
        client = self._via(data)
        if action != "create":
            response = client.delete(f"/v1/profiles/{name}")
            expected = 409 if name == "default" else 200 if name in self.profiles else 404
            assert response.status_code == expected, response.text
            if expected == 200:
                del self.profiles[name]
        if action != "delete":
            response = client.post("/v1/profiles", json={"name": name, "class_name": "bottle"})
            assert response.status_code == (409 if name in self.profiles else 201), response.text
            if name not in self.profiles:
                self.profiles[name] = ProfileModel(self._incarnation(), self.profiles["default"].image_size)

    @rule(
        data=st.data(),
        name=PROFILE,
        change=st.sampled_from(["class_name", "engine over HTTP", f"image_size {OTHER_SIZE}", "image_size 112"]),
    )
    def change_profile(self, data: st.DataObject, name: str, change: str) -> None:
        """A profile's class name (PATCH: the text changes), or its model: PATCH `engine: torch` takes the model
        the server serves it on (the default profile's), and an image size is what `serve --profile NAME --set
        image_size=...` sets. A model change rebuilds the bank from the stored parts: it keeps the model's good
        parts."""
        client = self._via(data)
        station = client.app.state.station
        if change.startswith("image_size"):
            size = int(change.split()[1])
            if name not in self.profiles:
                with pytest.raises(NotFound):
                    self._forward(client, station.put_profile, name, {"model_changes": ()}, False)
                return
            model = tuple(pair for pair in station.profile(name).model_changes if pair[0] != "image_size")
            self._forward(client, station.put_profile, name, {"model_changes": (*model, ("image_size", size))}, False)
            self.profiles[name].image_size = size
            return
        body = {"class_name": data.draw(st.sampled_from(["hazelnut", "bottle"]))} if change == "class_name" else {}
        response = client.patch(f"/v1/profiles/{name}", json=body or {"engine": "torch"})
        if name not in self.profiles:
            assert response.status_code == 404, response.text
            return
        ok(response)
        if not body:
            self.profiles[name].image_size = self.profiles["default"].image_size

    # -- claims ----------------------------------------------------------------------------------------------------
    def _expected_claim(self, key: str, holder: str, timeout_s: float) -> str:
        """What claiming `key` as `holder` gives, and the model after it."""
        held = self.claims.get(key)
        if held is None:
            self.claims[key] = ClaimModel(holder)
            return "mine"
        if held.result is not None:
            return "done"
        if held.holder != holder and timeout_s == FRESH:
            return "busy"
        held.holder = holder  # its own claim again, or one past the timeout: taken over
        return "mine"

    @rule(
        data=st.data(),
        step=st.sampled_from(["claim", "complete", "release", "send to the server", "hang past the timeout"]),
        key=st.integers(0, len(KEYS) - 1),
        holder=st.sampled_from(HOLDERS),
        timeout_s=st.sampled_from([FRESH, EXPIRED]),
    )
    def watcher(self, data: st.DataObject, step: str, key: int, holder: str, timeout_s: float) -> None:
        """A watcher's steps on a file. In-process (`watch` on the state): it claims the file before scoring it
        (EXPIRED: the earlier holder's claim is past its timeout and is taken over), completes it by recording its
        result (`_complete`), or stops and gives back what it holds unfinished. Through a server (`watch
        --server`, `_send`): claim, score and record in one request. Or it hangs past its timeout
        (`_expire_and_take_over`)."""
        client = self._via(data)
        station = client.app.state.station
        if step == "claim":
            claimed = station.claim("default", KEYS[key], IMAGES[key].name, timeout_s, holder)
            assert claimed == self._expected_claim(KEYS[key], holder, timeout_s)
        elif step == "complete":
            self._complete(client, key, holder)
        elif step == "release":
            mine = [k for k, c in self.claims.items() if c.holder == holder and c.result is None]
            assert station.release(holder) == len(mine)
            for k in mine:
                del self.claims[k]
        elif step == "send to the server":
            self._send(client, key, holder, timeout_s)
        else:
            self._expire_and_take_over(client, key)

    def _complete(self, client: Any, key: int, holder: str) -> None:
        """Score and record as the detect route does once its claim is "mine": a row only while `holder` still
        holds the claim unfinished; one whose claim was taken over (or released, or never taken) records nothing."""
        scored = client.portal.call(client.app.state.batcher.submit, "default", decode(DATA[key]))
        detection = Detection(IMAGES[key].name, DATA[key], decode(DATA[key]), scored.prediction, used=scored.used)
        detection.key, detection.holder = KEYS[key], holder
        client.app.state.station.record("default", scored.detector, [detection], 1.0)
        held = self.claims.get(KEYS[key])
        if held is None or held.holder != holder or held.result is not None:
            assert detection.lost and detection.result_id is None
            return
        assert not detection.lost and detection.result_id is not None
        assert detection.overlay_png is not None
        self._acknowledged(detection.result_id, key, "default", len(detection.overlay_png))
        held.result = detection.result_id

    def _expire_and_take_over(self, client: Any, key: int) -> None:
        """A watcher hangs while scoring a file past its claim's timeout; another takes the file over, and the
        first, finishing late, records nothing (the new holder records it)."""
        station = client.app.state.station
        held = self.claims.get(KEYS[key])
        if held is None or held.result is not None:
            claimed = station.claim("default", KEYS[key], IMAGES[key].name, FRESH, HOLDERS[0])
            assert claimed == self._expected_claim(KEYS[key], HOLDERS[0], FRESH)
            if claimed == "done":
                return
        late = self.claims[KEYS[key]].holder
        other = HOLDERS[1] if late == HOLDERS[0] else HOLDERS[0]
        assert station.claim("default", KEYS[key], IMAGES[key].name, FRESH, other) == "busy"
        assert station.claim("default", KEYS[key], IMAGES[key].name, EXPIRED, other) == "mine"
        self.claims[KEYS[key]].holder = other
        self._complete(client, key, late)

    def _send(self, client: Any, key: int, holder: str, timeout_s: float) -> None:
        """`watch --server`: the file sent with its claim key and the watcher's holder id; the server claims,
        scores and records in one request. Done before: the recorded answer, no second row; busy: 409."""
        params = {"source_key": KEYS[key], "holder": holder, "claim_timeout_s": timeout_s}
        response = client.post("/v1/profiles/default/detect", params=params, files=files([IMAGES[key]]))
        expected = self._expected_claim(KEYS[key], holder, timeout_s)
        if expected == "busy":
            assert response.status_code == 409, response.text
            return
        (result,) = ok(response)["results"]
        if expected == "done":
            assert ok(response)["duplicate"] is True
            assert result["result_id"] == self.claims[KEYS[key]].result
            return
        self._acknowledged(result["result_id"], key, "default", base64_len(result["overlay_png"]))
        self.claims[KEYS[key]].result = result["result_id"]

    # -- retention -------------------------------------------------------------------------------------------------
    def _retain(self, keep_days: float | None, max_bytes: int | None, pruned: list[int]) -> None:
        """Retention as the server runs it, with the put grace passed (no request in flight): `pruned` goes, with
        the claims it completed; a file only pruned rows named goes from the disk."""
        for path in self.store.root.rglob("*"):
            if path.is_file():
                past = time.time() - 2 * PUT_GRACE_S
                os.utime(path, (past, past))
        with self.engine.connect() as c:
            rows = {row.id: set(row[1:]) for row in c.execute(select(*files_of(db.results)))}
        assert self.first.app.state.station.prune(keep_days, max_bytes) == len(pruned)
        for result_id in pruned:
            del self.results[result_id]
        self.verdicts = [v for v in self.verdicts if v.result not in pruned]  # a verdict goes with its result
        for key in [k for k, c in self.claims.items() if c.result in pruned]:
            del self.claims[key]
        needed = self._named()
        for result_id in pruned:
            for sha in rows[result_id] - needed - {None}:
                assert not self.store.exists(sha), (result_id, sha)

    @rule(data=st.data(), by=st.sampled_from(["age", "bytes"]))
    def retention(self, data: st.DataObject, by: str) -> None:
        """By age (--keep-days): the oldest result ages past it and goes; a good part it taught stays in the bank.
        By bytes (--max-store-gb): the oldest results go until the files of those left hold the budget; then the
        disk holds the budget, the good parts and the banks, and nothing else once `station check --fix` ran."""
        if not self.results:
            return
        if by == "age":
            oldest = min(self.results)
            with self.engine.begin() as c:
                c.execute(update(db.results).where(db.results.c.id == oldest).values(created_at=time.time() - 7200))
            self._retain(1 / 24, None, [oldest])
            return
        newest_first = sorted(self.results, reverse=True)
        keep = data.draw(st.integers(0, len(newest_first)), label="keep")
        budget = max(1, sum(self.results[r].size for r in newest_first[:keep]))
        self._retain(None, budget, sorted(newest_first[keep:]))
        self.budget = budget
        report = check(self.engine, self.store, fix=True)
        assert report.dangling == [] and report.removed == len(report.orphans)
        named = self._named()
        on_disk = {p.name: p.stat().st_size for p in self.store.root.rglob("*") if p.is_file()}
        assert set(on_disk) == named
        taught = self._named(rows=False)
        assert sum(on_disk.values()) <= budget + sum(on_disk[sha] for sha in taught)

    def _named(self, rows: bool = True) -> set[str]:
        """Every file a result row (with `rows`), a good part or a profile's bank names."""
        with self.engine.connect() as c:
            named = {sha for (sha,) in c.execute(select(db.references.c.sha256))}
            named |= {sha for (sha,) in c.execute(select(db.profiles.c.bank_sha256)) if sha}
            if rows:
                named |= {sha for row in c.execute(select(*files_of(db.results))) for sha in row[1:] if sha}
        return named

    # -- invariants ------------------------------------------------------------------------------------------------
    @invariant()
    def each_acknowledged_result_is_stored_once(self) -> None:
        if self.first is None:
            return
        with self.engine.connect() as c:
            rows = {row.id: row for row in c.execute(select(db.results))}
        assert sorted(rows) == sorted(self.results)
        for result_id, r in self.results.items():
            assert (rows[result_id].image_sha256, rows[result_id].profile) == (SHA[r.image], r.profile)
        for client in self.instances():  # every instance answers the same history
            listed = ok(client.get("/v1/results", params={"limit": 1000}))["results"]
            assert sorted(row["id"] for row in listed) == sorted(self.results)

    @invariant()
    def each_claim_is_as_the_model_says(self) -> None:
        """A completed claim names its one result; an unfinished one its holder; a released one is gone."""
        if self.first is None:
            return
        with self.engine.connect() as c:
            held = {row.key: (row.claimed_by, row.result_id) for row in c.execute(select(db.claims))}
        assert held == {key: (c.holder, c.result) for key, c in self.claims.items()}

    @invariant()
    def no_row_points_at_a_missing_file(self) -> None:
        if self.first is None:
            return
        missing = sorted(sha for sha in self._named() if not self.store.exists(sha))
        assert not missing, missing

    @invariant()
    def each_bank_holds_exactly_the_models_good_parts(self) -> None:
        """In the database (its parts and its bank file) and in every instance once it has polled."""
        if self.first is None:
            return
        with self.engine.connect() as c:
            parts = {(row.profile, row.sha256) for row in c.execute(select(db.references))}
            banks = {row.name: row.bank_sha256 for row in c.execute(select(db.profiles))}
        assert parts == {(name, SHA[i]) for name, p in self.profiles.items() for i in p.good}
        assert set(banks) == set(self.profiles)
        for name, p in self.profiles.items():
            expected = {SHA[i] for i in p.good}
            bank_file = banks[name]
            assert (bank_file is None) == (not p.good), (name, bank_file, p.good)
            if bank_file is not None:
                assert {s["sha256"] for s in ReferenceBank.load(self.store.path(bank_file)).sources} == expected
        for client in self.instances():
            self._sync(client)
            station = client.app.state.station
            assert set(station.profiles) == set(self.profiles)
            for name, p in self.profiles.items():
                bank = self._forward(client, station.detector, name).references
                assert ({s["sha256"] for s in bank.sources} if bank else set()) == {SHA[i] for i in p.good}
                assert dict(station.profile(name).model_changes)["image_size"] == p.image_size

    @invariant()
    def the_disk_holds_the_budget_after_retention(self) -> None:
        """Until a new result, the rows' stored bytes, and the files they name, hold the last retention's budget;
        a row's stored bytes are its files'."""
        if self.first is None:
            return
        with self.engine.connect() as c:
            rows = list(c.execute(select(db.results.c.id, db.results.c.stored_bytes, *files_of(db.results)[1:])))
        for row in rows:
            assert row.stored_bytes == self.results[row.id].size
        if self.budget is not None:
            assert sum(row.stored_bytes for row in rows) <= self.budget
            named = {sha for row in rows for sha in row[2:] if sha}
            assert sum(self.store.path(sha).stat().st_size for sha in named) <= self.budget

    @invariant()
    def no_part_is_counted_both_ways(self) -> None:
        """What calibrate reads: each kept result's part once, by its last verdict, in one list only."""
        if self.first is None:
            return
        self._sync(self.first)  # labelled() looks a profile up as this instance last read it
        teaching = self.first.app.state.station._teaching
        for name in self.profiles:
            labelled = teaching.labelled(name)
            good = {hashlib.sha256(d).hexdigest() for d in labelled["good"]}
            defect = {hashlib.sha256(d).hexdigest() for d in labelled["defect"]}
            assert not good & defect
            assert defect == {SHA[i] for i in self._defects(name)}


def files_of(table: Any) -> tuple[Any, ...]:
    return (table.c.id, table.c.image_sha256, table.c.overlay_sha256, table.c.map_sha256)


def base64_len(text: str) -> int:
    return len(base64.b64decode(text))


def model_settings(examples: int, steps: int) -> settings:
    """Bounded and the same on every run (CI): derandomized, no example database. KANOCLIP_MODEL_EXAMPLES runs
    more examples; KANOCLIP_MODEL_SHRINK=1 shrinks a failure to its minimal example (minutes)."""
    phases = [Phase.explicit, Phase.reuse, Phase.generate]
    if os.environ.get("KANOCLIP_MODEL_SHRINK") == "1":
        phases.append(Phase.shrink)
    return settings(
        max_examples=int(os.environ.get("KANOCLIP_MODEL_EXAMPLES", examples)),
        stateful_step_count=steps,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        phases=phases,
    )


@pytest.mark.timeout(300)
def test_the_station_keeps_its_promises_against_a_plain_model() -> None:
    """About 40 s on 2 cores: 12 examples of up to 25 steps, on the state folder's SQLite."""
    run_state_machine_as_test(StationModel, settings=model_settings(examples=12, steps=25))


def test_a_verdict_through_an_instance_that_has_not_polled_yet_changes_the_bank_or_nothing(tmp_path: Path) -> None:
    """The machine's minimal example (`reversed_through_the_other_instance_within_a_poll`): a part called good
    through A, then defect through B within B's poll interval. B decides the bank change from its own bank in
    memory, which does not hold the part yet, so it records the verdict with no bank change: the bank keeps a
    part whose last verdict is defect. Either the verdict commits with the bank change it makes, or it is refused
    (409) and nothing is recorded."""
    state = tmp_path / "state"
    with station_client(state, poll_s=3600.0) as a, station_client(state, poll_s=3600.0) as b:
        (result,) = ok(a.post("/v1/detect", files=files(IMAGES[:1])))["results"]
        url = f"/v1/results/{result['result_id']}/feedback"
        ok(a.post(url, json={"verdict": "good"}))
        late = b.post(url, json={"verdict": "defect"})  # B polls once per poll_s: it has not seen A's part yet
        given = [f["verdict"] for f in ok(a.get(f"/v1/results/{result['result_id']}"))["feedback"]]
        parts = ok(a.get("/v1/profiles/default"))["references"]
    assert late.status_code in (200, 409), late.text
    assert (given, parts) == ((["good"], 1) if late.status_code == 409 else (["good", "defect"], 0))


def test_a_pruned_results_id_is_never_given_to_another_result(tmp_path: Path) -> None:
    """Found by the machine (its model first kept verdicts by result id): once retention has pruned every result (a
    quiet weekend past --keep-days), SQLite gives the next result the pruned one's id again, so a verdict sent for
    the pruned result (from a page still open, a CSV, a log) is taken as a verdict on another part and teaches
    its bank. An id names one result for ever; PostgreSQL's sequences already keep it so."""
    with station_client(tmp_path / "state") as c:
        (pruned,) = ok(c.post("/v1/detect", files=files(IMAGES[:1])))["results"]
        assert c.app.state.station.prune(None, 1) == 1
        (later,) = ok(c.post("/v1/detect", files=files(IMAGES[1:2])))["results"]
        late = c.post(f"/v1/results/{pruned['result_id']}/feedback", json={"verdict": "good"})
    assert later["result_id"] > pruned["result_id"]
    assert late.status_code == 404, late.text
