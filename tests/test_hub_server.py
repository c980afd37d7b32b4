"""The ``hub_server`` fixture drives the real huggingface_hub and datasets clients over HTTP on 127.0.0.1."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
import httpx2
import pytest
from huggingface_hub import DatasetCard, HfApi, ModelCard, ModelCardData, hf_hub_download, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

if TYPE_CHECKING:  # imported by pytest through conftest's pytest_plugins (an earlier import would skip rewriting)
    from hub_server import HubServer

ROWS = [
    {"prompt": "What is 2 + 2?", "response": "4", "score": 0.5},
    {"prompt": "Name a prime.", "response": "7", "score": -1.25},
    {"prompt": "Capital of France?", "response": "Paris", "score": 3.0},
]
CARD = """---
license: apache-2.0
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
---
# sel

Rows selected by local naturalness.
"""


def _dataset_folder(root: Path) -> Path:
    """A dataset repo folder as a user would upload it: a card with YAML and one parquet shard."""
    folder = root / "sel"
    (folder / "data").mkdir(parents=True)
    (folder / "README.md").write_text(CARD)
    datasets.Dataset.from_list(ROWS).to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    return folder


def _called(server: HubServer, method: str, fragment: str) -> int:
    return sum(1 for m, path in server.requests if m == method and fragment in path)


def test_whoami_and_token_errors(hub_server: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    assert HfApi().whoami()["name"] == "tester"
    hub_server.add_user("hf_other", "alice", orgs=["acme"])
    assert [org["name"] for org in HfApi(token="hf_other").whoami()["orgs"]] == ["acme"]

    # Unknown token: the Hub's 401, which whoami re-raises as HfHubHTTPError("Invalid user token...").
    with pytest.raises(HfHubHTTPError, match="Invalid user token") as unknown:
        HfApi(token="hf_unknown").whoami()
    assert unknown.value.response.status_code == 401
    # An unknown token is refused on every endpoint, like on the Hub.
    with pytest.raises(HfHubHTTPError) as on_repo:
        HfApi(token="hf_unknown").create_repo("tester/x", repo_type="dataset")
    assert on_repo.value.response.status_code == 401

    # No token at all: whoami fails client-side, writes are refused by the server with a 401.
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(LocalTokenNotFoundError):
        HfApi().whoami()
    with pytest.raises(HfHubHTTPError) as anonymous:
        HfApi().create_repo("tester/x", repo_type="dataset")
    assert anonymous.value.response.status_code == 401
    assert not hub_server.repo_exists("tester/x", "dataset")
    assert not hub_server.errors and not hub_server.blocked


def test_upload_folder_then_load_dataset(hub_server: HubServer, tmp_path: Path) -> None:
    api = HfApi()
    repo_url = api.create_repo("tester/sel", repo_type="dataset")
    assert repo_url.repo_id == "tester/sel" and repo_url.repo_type == "dataset"
    assert repo_url.startswith(hub_server.url)
    folder = _dataset_folder(tmp_path)

    commit = api.upload_folder(folder_path=folder, repo_id="tester/sel", repo_type="dataset")
    assert commit.oid == api.dataset_info("tester/sel").sha
    # upload_folder checks the card before hashing, create_commit again before committing.
    assert _called(hub_server, "POST", "/api/validate-yaml") == 2
    assert sorted(hub_server.files("tester/sel", "dataset")) == [
        ".gitattributes",
        "README.md",
        "data/train-00000-of-00001.parquet",
    ]
    assert (hub_server.snapshot_dir("tester/sel", "dataset") / "README.md").read_text() == CARD

    loaded = datasets.load_dataset("tester/sel", split="train")
    assert loaded.to_list() == ROWS  # row for row, same order
    readme = hf_hub_download("tester/sel", "README.md", repo_type="dataset")
    assert Path(readme).read_bytes() == (folder / "README.md").read_bytes()
    assert DatasetCard.load("tester/sel").data.license == "apache-2.0"
    assert api.dataset_info("tester/sel").card_data.license == "apache-2.0"

    # Re-uploading the same folder is a no-op: preupload returns the remote oids, the client skips the commit.
    api.upload_folder(folder_path=folder, repo_id="tester/sel", repo_type="dataset")
    assert hub_server.commits("tester/sel", "dataset") == ["Upload folder using huggingface_hub", "initial commit"]
    assert not hub_server.errors and not hub_server.blocked


def test_dataset_push_to_hub_round_trip(hub_server: HubServer) -> None:
    datasets.Dataset.from_list(ROWS).push_to_hub("tester/pushed")
    assert any(path.startswith("data/train-") for path in hub_server.files("tester/pushed", "dataset"))
    assert datasets.load_dataset("tester/pushed", split="train").to_list() == ROWS
    assert not hub_server.errors and not hub_server.blocked


def test_foreign_repo_is_not_writable(hub_server: HubServer, tmp_path: Path) -> None:
    hub_server.add_foreign_repo("other-org/taken", repo_type="dataset")
    api = HfApi()
    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_repo("other-org/taken", repo_type="dataset")
    assert conflict.value.response.status_code == 409
    api.create_repo("other-org/taken", repo_type="dataset", exist_ok=True)  # the client swallows the 409

    with pytest.raises(HfHubHTTPError) as forbidden:
        api.upload_folder(folder_path=_dataset_folder(tmp_path), repo_id="other-org/taken", repo_type="dataset")
    assert type(forbidden.value) is HfHubHTTPError  # plain class: a 403 has no dedicated subclass
    assert forbidden.value.response.status_code == 403
    assert "rights" in str(forbidden.value)
    assert _called(hub_server, "POST", "/commit/") == 0  # refused at preupload, before any commit
    assert hub_server.commits("other-org/taken", "dataset") == ["initial commit"]

    # A repo in an org the user belongs to is writable.
    hub_server.add_user("hf_member", "bob", orgs=["team"])
    HfApi(token="hf_member").create_repo("team/shared", repo_type="dataset")
    assert hub_server.repo_exists("team/shared", "dataset")
    assert not hub_server.errors and not hub_server.blocked


def test_failed_commit_then_retry(hub_server: HubServer, tmp_path: Path) -> None:
    api = HfApi()
    api.create_repo("tester/sel", repo_type="dataset")
    folder = _dataset_folder(tmp_path)

    hub_server.fail_next("POST", r"/commit/", status=500)
    with pytest.raises(HfHubHTTPError) as failed:
        api.upload_folder(folder_path=folder, repo_id="tester/sel", repo_type="dataset")
    assert failed.value.response.status_code == 500
    assert hub_server.commits("tester/sel", "dataset") == ["initial commit"]

    # A dropped connection surfaces as the transport error itself (the commit POST is never retried).
    hub_server.fail_next("POST", r"/commit/", drop=True)
    with pytest.raises(httpx2.RemoteProtocolError):
        api.upload_folder(folder_path=folder, repo_id="tester/sel", repo_type="dataset")

    api.upload_folder(folder_path=folder, repo_id="tester/sel", repo_type="dataset")
    assert _called(hub_server, "POST", "/commit/") == 3
    assert hub_server.commits("tester/sel", "dataset")[0] == "Upload folder using huggingface_hub"
    assert datasets.load_dataset("tester/sel", split="train").to_list() == ROWS
    assert not hub_server.errors and not hub_server.blocked


def test_model_folder_snapshot_round_trip(hub_server: HubServer, tiny_student_dir: Path, tmp_path: Path) -> None:
    api = HfApi()
    api.create_repo("tester/tiny-student")
    api.upload_folder(folder_path=tiny_student_dir, repo_id="tester/tiny-student", commit_message="Add student")
    assert hub_server.commits("tester/tiny-student") == ["Add student", "initial commit"]

    local = Path(snapshot_download("tester/tiny-student", cache_dir=tmp_path / "cache"))
    uploaded = sorted(p.relative_to(tiny_student_dir).as_posix() for p in tiny_student_dir.rglob("*") if p.is_file())
    assert uploaded and "config.json" in uploaded
    for name in uploaded:
        assert (local / name).read_bytes() == (tiny_student_dir / name).read_bytes(), name
    assert local.name == api.model_info("tester/tiny-student").sha  # snapshot folder named by the commit
    assert not hub_server.errors and not hub_server.blocked


def test_card_push_and_validation(hub_server: HubServer) -> None:
    card = ModelCard.from_template(ModelCardData(license="apache-2.0", library_name="transformers"), model_id="x")
    HfApi().create_repo("tester/carded")
    # RepoCard.validate() posts to constants.ENDPOINT; the upload goes through the module-level HfApi.
    card.push_to_hub("tester/carded")
    assert HfApi().model_info("tester/carded").card_data.license == "apache-2.0"
    assert _called(hub_server, "POST", "/api/validate-yaml") == 2  # RepoCard.validate, then create_commit

    hub_server.fail_next("POST", "/api/validate-yaml", status=400, message="license: not a valid license")
    with pytest.raises(ValueError, match="not a valid license"):
        card.push_to_hub("tester/carded")
    hub_server.fail_next("POST", "/api/validate-yaml", status=400, message="license: not a valid license")
    with pytest.raises(ValueError, match="Invalid metadata in README.md"):
        HfApi().upload_file(path_or_fileobj=str(card).encode(), path_in_repo="README.md", repo_id="tester/carded")
    assert hub_server.commits("tester/carded") == ["Upload README.md with huggingface_hub", "initial commit"]
    assert not hub_server.errors and not hub_server.blocked


def test_network_guard(hub_server: HubServer) -> None:
    # The real Hub is out of reach: huggingface_hub's clients refuse at once, other code cannot resolve names.
    with pytest.raises(RuntimeError, match="refused a request"):
        HfApi(endpoint="https://huggingface.co").whoami()
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("huggingface.co", 443)
    assert hub_server.blocked == ["https://huggingface.co/api/whoami-v2", "huggingface.co"]
