"""Models on the Hugging Face Hub (#33): the `hf://ORG/NAME[@REV]` names, fetching through huggingface_hub's cache
(offline from it under `HF_HUB_OFFLINE=1`) and uploading one commit. What the files are is the checkpoint's business
(`checkpoint.locate`, `evaluation.sharing`); this module only moves them.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kanoclip._version import __version__
from kanoclip.errors import CheckpointError, ConfigError

SCHEME = "hf://"
# How a kanoclip model is labelled on the Hub (its card's metadata): the library, the tags, and the license unless its
# owner chooses another (a Hub license identifier; apache-2.0 is kanoclip's own).
LIBRARY = "kanoclip"
TAGS = ("anomaly-detection", "zero-shot-anomaly-detection")
DEFAULT_LICENSE = "apache-2.0"
FORM = "hf://ORG/NAME or hf://ORG/NAME@REVISION (a branch, tag or commit)"
# A git ref as the Hub takes one: no spaces, `..`, `@{`, `~^:?*[\`, and no leading or trailing `/` or `.`
_REVISION = re.compile(r"(?!.*\.\.)(?!.*@\{)(?!.*//)[A-Za-z0-9_][A-Za-z0-9._/-]*(?<![/.])")
LOGIN = "log in with `hf auth login` or set HF_TOKEN"


@dataclass(frozen=True)
class HubName:
    """A model repository on the Hub and, optionally, the revision to use (None: the default branch, main)."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{SCHEME}{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class Snapshot:
    """A revision's files in the cache: the snapshot folder and the commit the revision resolved to."""

    name: HubName
    folder: Path
    commit: str


def is_hub_name(text: object) -> bool:
    return isinstance(text, str) and text.startswith(SCHEME)


def parse(text: str) -> HubName:
    """`hf://ORG/NAME[@REV]` -> HubName; anything else that starts with hf:// is refused with the form to use."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not is_hub_name(text):
        raise ConfigError(f"{text!r} is not a Hub name: {FORM}")
    repo_id, at, revision = text.removeprefix(SCHEME).partition("@")
    org, slash, model = repo_id.partition("/")
    if not org or not slash or not model or "/" in model:
        raise ConfigError(f"{text!r} names no model: write {FORM}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ConfigError(f"{text!r}: {repo_id!r} is not a valid repository name ({e}); write {FORM}") from e
    if at and not _REVISION.fullmatch(revision):
        raise ConfigError(f"{text!r}: {revision!r} is not a revision (a branch, tag or commit); write {FORM}")
    return HubName(repo_id, revision or None)


def offline() -> bool:
    """Whether huggingface_hub was told not to reach the Hub (HF_HUB_OFFLINE=1, read when it was imported)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def cache_folder() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def download(name: HubName, files: Sequence[str]) -> Snapshot:
    """Fetch `files` of the revision into huggingface_hub's cache, or find them there when the Hub cannot be asked;
    the snapshot folder is named by the resolved commit. Errors say what to do, naming the repository."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        folder = snapshot_download(
            name.repo_id,
            revision=name.revision,
            allow_patterns=list(files),
            library_name=LIBRARY,
            library_version=__version__,
        )
    except LocalEntryNotFoundError as e:
        why = "HF_HUB_OFFLINE=1 forbids downloads" if offline() else "the Hub could not be reached"
        raise CheckpointError(
            f"{name} is not in the Hugging Face cache ({cache_folder()}) and {why}: run `kanoclip pull {name}` while "
            "online (it fills the cache), then run this again"
        ) from e
    except GatedRepoError as e:
        raise CheckpointError(f"{name} is gated: accept its conditions on the Hub, then {LOGIN}") from e
    except RevisionNotFoundError as e:
        raise CheckpointError(f"{name}: the repository {name.repo_id} has no revision {name.revision!r}") from e
    except RepositoryNotFoundError as e:
        raise CheckpointError(
            f"{name}: no model repository {name.repo_id} on the Hub (or it is private: {LOGIN})"
        ) from e
    except HfHubHTTPError as e:
        raise CheckpointError(f"{name}: the Hub answered with an error ({_first_line(e)})") from e
    snapshot = Path(folder)
    missing = [f for f in files if not (snapshot / f).is_file()]
    if missing:
        raise CheckpointError(
            f"{name} (commit {snapshot.name}) has no {', '.join(missing)}: is it a kanoclip model? "
            "(`kanoclip push` publishes one)"
        )
    return Snapshot(name, snapshot, snapshot.name)


def in_cache(folder: Path) -> bool:
    """Whether `folder` is a snapshot in huggingface_hub's cache layout (models--ORG--NAME/snapshots/<commit>):
    files there are links into the cache's blobs and are never edited in place."""
    return folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--")


@dataclass(frozen=True)
class Pushed:
    """What one upload made: the commit and where to see it."""

    repo_id: str
    revision: str
    commit: str
    url: str


def upload(
    folder: Path, files: Sequence[str], repo_id: str, message: str, private: bool = False, revision: str | None = None
) -> Pushed:
    """One commit of `files` from `folder` to the model repository `repo_id` (created when missing, then on the
    branch `revision`, created from main when missing). Only the files named are sent, whatever else the folder
    holds."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HfHubHTTPError, RepositoryNotFoundError

    api = HfApi(library_name=LIBRARY, library_version=__version__)
    where = f"{SCHEME}{repo_id}" + (f"@{revision}" if revision else "")
    try:
        with warnings.catch_warnings():
            # the plain-LFS path (no hf_xet) hands a file object to its HTTP client, which warns about its own API
            warnings.filterwarnings("ignore", message=r"Use 'content=<\.\.\.>'")
            info = _commit(api, folder, files, repo_id, message, private, revision)
    except RepositoryNotFoundError as e:
        raise CheckpointError(f"cannot push to {where}: no such repository, or no right to write it ({LOGIN})") from e
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        hint = f": {LOGIN} with a token that may write to {repo_id}" if status in (401, 403) else ""
        raise CheckpointError(f"cannot push to {where}: the Hub answered with an error ({_first_line(e)}){hint}") from e
    except ValueError as e:  # huggingface_hub's checks, e.g. the card's metadata refused by the Hub
        raise CheckpointError(f"cannot push to {where}: {_first_line(e)}") from e
    except _transport_errors() as e:
        raise CheckpointError(f"cannot push to {where}: the Hub could not be reached ({_first_line(e)})") from e
    return Pushed(repo_id, revision or "main", str(info.oid), str(info.commit_url))


def _commit(
    api: Any, folder: Path, files: Sequence[str], repo_id: str, message: str, private: bool, revision: str | None
) -> Any:
    from huggingface_hub import CommitOperationAdd

    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    operations = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(folder / f)) for f in files]
    return api.create_commit(repo_id, operations, commit_message=message, revision=revision, repo_type="model")


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The network errors of the HTTP library huggingface_hub uses (it changed between its versions)."""
    errors: list[type[BaseException]] = [OSError]
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            errors.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def _first_line(error: Any) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
