"""#32 from the command line: `kanoclip station adapt|jobs|models|promote|rollback|cancel` against a real running
server (uvicorn, in a thread), with its API key; what they print is what the API says, and refusals are one line."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kanoclip.cli import main
from tests.support.versions import fixed, labelled_server

KEY = "versions-k3y"


@pytest.fixture
def served(tmp_path: Path, shared_data: Path) -> Iterator[tuple[str, httpx.Client]]:
    with labelled_server(tmp_path / "st", shared_data, KEY) as served:
        yield served


def test_adapt_wait_models_promote_rollback_from_the_cli(
    served: tuple[str, httpx.Client], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, http = served
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    remote = ["--server", url, "--api-key-file", str(key_file)]

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["station", *argv, *remote])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = run("adapt", "default", "--max-steps", "1", "--synth", "cutpaste", "--seed", "1", "--wait")
    assert code == 0, err
    assert re.search(r"done: model version 1 of profile 'default'", out), out
    listing = http.get("/v1/profiles/default/models").json()
    numbers = listing["versions"][0]["numbers"]
    assert numbers["new"]["rows"] == 8 and numbers["new"]["image_auroc"] is not None
    assert listing["versions"][0]["config"]["adapt"]["seed"] == 1
    auroc = re.search(r"image AUROC\s+(\S+)\s+(\S+)", out)
    assert auroc, out
    assert auroc.groups() == tuple(fixed(numbers[w]["image_auroc"]) for w in ("new", "current"))
    f1 = re.search(r"\bF1\s+(\S+)\s+(\S+)", out)
    assert f1 and f1.groups() == tuple(fixed(numbers[w]["f1"]) for w in ("new", "current")), out
    assert f"kanoclip station promote default 1 --server {url}" in out

    code, out, _ = run("jobs", "default")
    assert code == 0 and re.search(r"\bdone\b.*version 1", out), out

    code, out, _ = run("models", "default")
    assert code == 0 and "no model version is current" in out, out
    row = next(line for line in out.splitlines() if line.strip().startswith("1 "))
    new, cur = numbers["new"], numbers["current"]
    assert row.split()[-4:] == [
        fixed(new["image_auroc"]),
        fixed(cur["image_auroc"]),
        fixed(new["f1"]),
        fixed(cur["f1"]),
    ]
    assert "*" not in row

    code, out, err = run("promote", "default", "1")
    assert code == 0, err
    assert http.get("/v1/profiles/default").json()["model_version"] == 1
    code, out, _ = run("models", "default")
    assert "model version 1 is current" in out and re.search(r"^\s+1 \*", out, re.M), out

    code, out, err = run("rollback", "default")
    assert code == 0 and "the model it started with" in out, err
    assert http.get("/v1/profiles/default").json()["model_version"] is None
    code, out, err = run("rollback", "default")
    assert code == 2 and "no promote to roll back" in err and "HTTP 409" in err, err

    # a job started without --wait is listed running, and cancelled once
    code, out, _ = run("adapt", "default", "--max-steps", "100000")
    started = re.search(r"job ([0-9a-f]{32}): adapting profile 'default'", out)
    assert code == 0 and started and f"kanoclip station cancel {started[1]} --server {url}" in out, out
    code, out, _ = run("jobs", "default")
    assert re.search(rf"^{started[1]}\s+default\s+running\b", out, re.M), out
    code, out, _ = run("cancel", started[1])
    assert code == 0 and f"job {started[1]} (default): cancelled" in out, out
    assert http.get(f"/v1/jobs/{started[1]}").json()["state"] == "cancelled"
    code, _, err = run("cancel", started[1])
    assert code == 2 and "ended already" in err, err

    # the server's refusals, each said in one line with its reason
    code, _, err = run("promote", "default", "7")
    assert code == 2 and "has no model version 7" in err, err
    code, _, err = run("promote", "default", "v1")
    assert code == 2 and "VERSION is a version number" in err, err
    code, _, err = run("adapt", "default", "--synth", "laser")
    assert code == 2 and "--synth" in err and "unknown synthesizer" in err, err
    code, _, err = run("cancel", "nope")
    assert code == 2 and "no job 'nope'" in err, err
    assert main(["station", "models", "default", "--server", url]) == 2  # no key
    assert "HTTP 401" in capsys.readouterr().err


def test_an_unreachable_server_is_one_line_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["models", "default"], ["adapt", "default", "--wait"], ["jobs"], ["rollback", "default"]):
        assert main(["station", *argv, "--server", "http://127.0.0.1:9"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("kanoclip: error: cannot reach the station at http://127.0.0.1:9"), err
        assert "is `kanoclip serve` running?" in err and "Traceback" not in err
    assert main(["station", "jobs", "--server", "127.0.0.1:8000"]) == 2
    assert "give the station's URL" in capsys.readouterr().err
