"""`kanoclip push` and `kanoclip pull`: a checkpoint to and from the Hugging Face Hub (#33)."""

from __future__ import annotations

from dataclasses import dataclass

from kanoclip.cli.flags import Command, Parsed, Section
from kanoclip.model import hub
from kanoclip.options import option


@dataclass(frozen=True, kw_only=True)
class PushOptions:
    checkpoint: str = option(
        positional=True, metavar="CHECKPOINT", help="the checkpoint folder (from `kanoclip train` or `adapt`)"
    )
    repo_id: str = option(positional=True, metavar="REPO_ID", help="the model repository on the Hub: ORG/NAME")
    private: bool = option(False, help="create the repository private (an existing one keeps its visibility)")
    revision: str | None = option(
        None, metavar="BRANCH", help="push to this branch (created from main when missing); default: main"
    )
    local_dir: str | None = option(
        None, metavar="DIR", help="write the folder the Hub would receive into DIR instead (no network)"
    )
    license: str = option(hub.DEFAULT_LICENSE, help="the card's license, as a Hub license identifier")
    results: str | None = option(
        None,
        metavar="FILE",
        help="the results.json of `kanoclip evaluate --checkpoint CHECKPOINT`: its means become the card's metrics "
        "table (refused when it measured other weights)",
    )
    datasets: tuple[str, ...] = option(
        (),
        name="--dataset",
        metavar="NAME",
        help="a dataset it was trained on, for the card's metadata (repeat; default: the training data's folder "
        "name, from the checkpoint)",
    )


def push(parsed: Parsed) -> int:
    from kanoclip.evaluation import sharing

    o = parsed.get(PushOptions)
    if o.local_dir is not None:
        folder = sharing.write_folder(o.checkpoint, o.local_dir, o.repo_id, o.license, o.results, o.datasets)
        print(f"wrote {', '.join(sharing.SHARED)} to {folder} (what `kanoclip push` sends; nothing was uploaded)")
        return 0
    pushed = sharing.push(o.checkpoint, o.repo_id, o.private, o.revision, o.license, o.results, o.datasets)
    name = hub.HubName(pushed.repo_id, o.revision)
    print(f"pushed {', '.join(sharing.SHARED)} to {name}: commit {pushed.commit}")
    print(f"  {pushed.url}")
    print(f"use it with: kanoclip detect IMAGES --checkpoint {name}")
    return 0


@dataclass(frozen=True, kw_only=True)
class PullOptions:
    name: str = option(positional=True, metavar="hf://ORG/NAME[@REV]", help="the model on the Hub")


def pull(parsed: Parsed) -> int:
    from kanoclip.model import checkpoint

    o = parsed.get(PullOptions)
    hub.parse(o.name)  # a malformed name (or a local folder) is refused before the Hub is asked
    located = checkpoint.locate(o.name)
    checkpoint.verify(located.folder)  # a kanoclip checkpoint whose weights are the ones its config recorded
    assert located.hub is not None
    print(f"folder: {located.folder}")
    print(f"commit: {located.hub['commit']}")
    print(f"use it with: kanoclip detect IMAGES --checkpoint {o.name}   (HF_HUB_OFFLINE=1 runs from the cache)")
    return 0


PUSH_EPILOG = """examples:
  kanoclip push runs/mvtec/final someone/kanoclip-mvtec --local-dir shared-model     the folder only, no network
  kanoclip push runs/mvtec/final someone/kanoclip-mvtec --results eval/results.json --dataset mvtec_ad
  kanoclip push runs/line3/final acme/line3-brackets --private --revision v2

sends one commit of exactly three files: model.safetensors (the learnable weights, unchanged), config.json (the full
run config the checkpoint holds, as it is) and README.md (a model card: library_name kanoclip, the license, the tags
anomaly-detection and zero-shot-anomaly-detection, the datasets, the metrics of --results, the command that trains
it again). Never a pickle. Log in first: `hf auth login`, or set HF_TOKEN; HF_ENDPOINT names another Hub.
"""

PULL_EPILOG = """examples:
  kanoclip pull hf://someone/kanoclip-mvtec                  the main branch, into the Hugging Face cache
  kanoclip pull hf://acme/line3-brackets@v2                  a branch, tag or commit
  HF_HUB_OFFLINE=1 kanoclip detect line3/ --checkpoint hf://acme/line3-brackets@v2     then, without a network

prints the cached folder and the commit the revision resolved to. Every --checkpoint takes hf://ORG/NAME[@REV]
(detect, evaluate, calibrate, export, serve, watch, station profiles): fetched on first use, then read from the cache
(HF_HOME / HF_HUB_CACHE say where); run.json records the repository and the commit.
"""

PUSH = Command(
    "push",
    "publish a checkpoint on the Hugging Face Hub (or write the folder)",
    push,
    (Section("push", PushOptions),),
    PUSH_EPILOG,
)
PULL = Command(
    "pull",
    "fetch a checkpoint from the Hugging Face Hub into its cache",
    pull,
    (Section("pull", PullOptions),),
    PULL_EPILOG,
)
