"""A real HTTP server on 127.0.0.1 that answers as the Hugging Face Hub's API does, for the push and pull tests.

It keeps repositories in memory (branches -> commits -> files) and answers the endpoints huggingface_hub 2.x calls:
create_repo (POST /api/repos/create), the card check (POST /api/validate-yaml), create_branch, create_commit (its
preupload, the LFS batch API and a basic LFS upload, then the NDJSON commit), and for snapshot_download repo_info
(GET /api/models/R/revision/REV), list_repo_tree and HEAD/GET /R/resolve/REV/FILE. Files named *.safetensors go
through LFS (as the Hub's .gitattributes sends them), the rest as regular files. Set HF_HUB_DISABLE_XET=1 in the
client: Xet storage is another server, not faked here.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

from tests.support.threaded import ThreadedServer

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


@dataclass
class Repo:
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit -> the whole tree: path -> bytes


@dataclass
class Commit:
    """One commit the server received: where, the operations' kinds per path, and the bytes each file ended as."""

    repo_id: str
    revision: str
    oid: str
    kinds: dict[str, str]  # path -> "file" (regular, inline) | "lfsFile"
    files: dict[str, bytes]
    authorization: str | None


class FakeHub(ThreadedServer):
    """The Hub's API for huggingface_hub, in memory; `requests` lists (method, path) in order, `commits` what landed."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}  # sha256 -> bytes uploaded through the LFS API
        self.requests: list[tuple[str, str]] = []
        self.commits: list[Commit] = []
        self.validated: list[str] = []  # README contents sent to /api/validate-yaml
        self.lock = threading.Lock()
        self._counter = itertools.count(1)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                hub._dispatch(self, "GET")

            def do_HEAD(self) -> None:
                hub._dispatch(self, "HEAD")

            def do_POST(self) -> None:
                hub._dispatch(self, "POST")

            def do_PUT(self) -> None:
                hub._dispatch(self, "PUT")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    # -- routing ----------------------------------------------------------------------------------------------------
    def _dispatch(self, h: BaseHTTPRequestHandler, method: str) -> None:
        split = urlsplit(h.path)
        parts = [unquote(p) for p in split.path.strip("/").split("/")]
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        with self.lock:
            self.requests.append((method, split.path))
        try:
            status, payload, headers = self._route(method, parts, body, h.headers.get("Authorization"))
        except KeyError as e:
            status, payload, headers = 404, {"error": f"not found: {e}"}, {"X-Error-Code": "RepoNotFound"}
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        h.send_response(status)
        for key, value in headers.items():
            h.send_header(key, value)
        if "Content-Type" not in headers:
            h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if method != "HEAD":
            h.wfile.write(data)

    def _route(self, method: str, p: list[str], body: bytes, auth: str | None) -> tuple[int, Any, dict[str, str]]:
        if method == "POST" and p == ["api", "repos", "create"]:
            return self._create_repo(json.loads(body))
        if method == "POST" and p == ["api", "validate-yaml"]:
            return self._validate_yaml(json.loads(body))
        if method == "PUT" and p[0] == "lfs-upload":
            return self._lfs_upload(p[1], body)
        if method == "POST" and len(p) == 6 and p[1].endswith(".git") and p[2:] == ["info", "lfs", "objects", "batch"]:
            return self._lfs_batch(json.loads(body))
        if len(p) >= 2 and p[0] != "api" and p[2:3] == ["resolve"]:
            repo_id, revision, path = f"{p[0]}/{p[1]}", p[3], "/".join(p[4:])
            return self._resolve(method, repo_id, revision, path)
        if p[:2] == ["api", "models"] and len(p) >= 5:
            repo_id, action, rest = f"{p[2]}/{p[3]}", p[4], p[5:]
            if method == "POST" and action == "branch":
                return self._create_branch(repo_id, "/".join(rest))
            if method == "POST" and action == "preupload":
                return self._preupload(repo_id, json.loads(body))
            if method == "POST" and action == "commit":
                return self._commit(repo_id, "/".join(rest), body, auth)
            if method == "GET" and action == "revision":
                return self._repo_info(repo_id, "/".join(rest))
            if method == "GET" and action == "tree":
                return self._tree(repo_id, rest[0])
        return 404, {"error": f"the fake Hub does not answer {method} /{'/'.join(p)}"}, {}

    # -- writing ----------------------------------------------------------------------------------------------------
    def _create_repo(self, payload: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        repo_id = f"{payload['organization']}/{payload['name']}"
        answer = {"url": f"{self.url}/{repo_id}", "name": repo_id}
        with self.lock:
            if repo_id in self.repos:
                return 409, {**answer, "error": "You already created this model repo"}, {}
            repo = Repo(private=payload.get("visibility") == "private")
            first = self._new_oid()
            repo.commits[first] = {".gitattributes": GITATTRIBUTES}
            repo.branches["main"] = first
            self.repos[repo_id] = repo
        return 200, answer, {}

    def _validate_yaml(self, payload: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        content = payload["content"]
        self.validated.append(content)
        if not content.startswith("---\n"):
            return 200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]}, {}
        metadata = yaml.safe_load(content.split("---\n")[1])
        if not isinstance(metadata, dict):
            return 400, {"errors": [{"message": "metadata is not a mapping"}]}, {}
        return 200, {"errors": [], "warnings": []}, {}

    def _create_branch(self, repo_id: str, branch: str) -> tuple[int, Any, dict[str, str]]:
        with self.lock:
            repo = self.repos[repo_id]
            if branch in repo.branches:
                return 409, {"error": "Reference already exists"}, {}
            repo.branches[branch] = repo.branches["main"]
        return 200, {}, {}

    def _preupload(self, repo_id: str, payload: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        self.repos[repo_id]
        files = [
            {"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(".safetensors") else "regular"}
            | {"shouldIgnore": False}
            for f in payload["files"]
        ]
        return 200, {"files": files, "commitOid": None}, {}

    def _lfs_batch(self, payload: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        objects = [
            {"oid": o["oid"], "size": o["size"], "actions": {"upload": {"href": f"{self.url}/lfs-upload/{o['oid']}"}}}
            for o in payload["objects"]
        ]
        return 200, {"transfer": "basic", "objects": objects}, {}

    def _lfs_upload(self, oid: str, body: bytes) -> tuple[int, Any, dict[str, str]]:
        if hashlib.sha256(body).hexdigest() != oid:
            return 400, {"error": "the content does not match its oid"}, {}
        with self.lock:
            self.lfs[oid] = body
        return 200, {}, {}

    def _commit(self, repo_id: str, revision: str, body: bytes, auth: str | None) -> tuple[int, Any, dict[str, str]]:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        kinds: dict[str, str] = {}
        files: dict[str, bytes] = {}
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "lfsFile":
                if value["oid"] not in self.lfs or len(self.lfs[value["oid"]]) != value["size"]:
                    return 422, {"error": f"LFS object {value['oid']} was not uploaded"}, {}
                files[value["path"]] = self.lfs[value["oid"]]
            else:
                return 400, {"error": f"the fake Hub takes no {line['key']} operation"}, {}
            kinds[value["path"]] = line["key"]
        with self.lock:
            repo = self.repos[repo_id]
            if revision not in repo.branches:
                return 404, {"error": f"Invalid rev id: {revision}"}, {"X-Error-Code": "RevisionNotFound"}
            oid = self._new_oid()
            repo.commits[oid] = {**repo.commits[repo.branches[revision]], **files}
            repo.branches[revision] = oid
            self.commits.append(Commit(repo_id, revision, oid, kinds, files, auth))
        return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}, {}

    # -- reading ----------------------------------------------------------------------------------------------------
    def _tree_of(self, repo_id: str, revision: str) -> tuple[str, dict[str, bytes]] | None:
        repo = self.repos[repo_id]
        oid = repo.branches.get(revision, revision)
        return (oid, repo.commits[oid]) if oid in repo.commits else None

    def _repo_info(self, repo_id: str, revision: str) -> tuple[int, Any, dict[str, str]]:
        found = self._tree_of(repo_id, revision)
        if found is None:
            return 404, {"error": f"Invalid rev id: {revision}"}, {"X-Error-Code": "RevisionNotFound"}
        oid, tree = found
        siblings = [{"rfilename": path} for path in sorted(tree)]
        return 200, {"id": repo_id, "sha": oid, "private": self.repos[repo_id].private, "siblings": siblings}, {}

    def _tree(self, repo_id: str, revision: str) -> tuple[int, Any, dict[str, str]]:
        found = self._tree_of(repo_id, revision)
        if found is None:
            return 404, {"error": f"Invalid rev id: {revision}"}, {"X-Error-Code": "RevisionNotFound"}
        entries = []
        for path, data in sorted(found[1].items()):
            entry: dict[str, Any] = {"type": "file", "oid": _git_oid(data), "size": len(data), "path": path}
            if path.endswith(".safetensors"):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        return 200, entries, {}

    def _resolve(self, method: str, repo_id: str, revision: str, path: str) -> tuple[int, Any, dict[str, str]]:
        found = self._tree_of(repo_id, revision)
        if found is None:
            return 404, {"error": f"Invalid rev id: {revision}"}, {"X-Error-Code": "RevisionNotFound"}
        oid, tree = found
        if path not in tree:
            return 404, {"error": f"{path} not found"}, {"X-Error-Code": "EntryNotFound"}
        data = tree[path]
        lfs = path.endswith(".safetensors")
        etag = hashlib.sha256(data).hexdigest() if lfs else _git_oid(data)
        headers = {"X-Repo-Commit": oid, "ETag": f'"{etag}"', "Content-Type": "application/octet-stream"}
        if lfs:
            headers |= {"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))}
        return 200, data, headers

    def _new_oid(self) -> str:
        return hashlib.sha1(f"commit {next(self._counter)}".encode()).hexdigest()


def _git_oid(data: bytes) -> str:
    """The git blob id the Hub reports for a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
