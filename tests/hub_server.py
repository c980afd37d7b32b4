"""A tiny Hugging Face Hub-compatible HTTP server for tests, and the ``hub_server`` pytest fixture.

The server speaks just enough of the Hub's HTTP API for the *real* ``huggingface_hub`` client (``HfApi``,
``hf_hub_download``, ``snapshot_download``, ``HfFileSystem``, ``RepoCard.push_to_hub``) and ``datasets``
(``load_dataset(repo_id)``, ``Dataset.push_to_hub``) to run unchanged over real HTTP on 127.0.0.1. It uses only
the standard library (``http.server.ThreadingHTTPServer`` in a daemon thread) plus PyYAML, which both clients
already depend on.

Endpoints served (as huggingface_hub 2.4 / datasets 5.2 call them)::

    GET  /api/whoami-v2                                     Bearer token -> user (401 for an unknown token)
    POST /api/repos/create, DELETE /api/repos/delete        409 if it exists, 403 outside your namespaces
    POST /api/validate-yaml                                 README front matter check (400 on bad YAML)
    GET  /api/{models|datasets|spaces}/{repo}[/revision/{rev}]   repo info: sha, siblings, cardData, private...
    GET  /api/{type}s/{repo}/tree/{rev}[/{path}]            ?recursive=, ?expand= (no pagination)
    POST /api/{type}s/{repo}/paths-info/{rev}               form field ``paths`` (repeated)
    POST /api/{type}s/{repo}/preupload/{rev}                "lfs" or "regular" by the Hub's rule (never Xet)
    POST /[datasets/]{repo}.git/info/lfs/objects/batch|verify, PUT /lfs-upload/{sha256}   git-LFS basic transfer
    POST /api/{type}s/{repo}/commit/{rev}                   NDJSON: header, file (base64), lfsFile,
                                                            deletedFile/deletedFolder; ?create_pr=1 opens refs/pr/N
    POST|DELETE /api/{type}s/{repo}/branch/{branch}, GET .../refs, GET .../commits/{rev}
    GET|HEAD /[datasets/|spaces/]{repo}/resolve/{rev}/{path}   ETag, X-Repo-Commit, Content-Length, Range
    GET  /api/agent-harnesses                               empty registry (the client's agent detection)

Errors carry the ``X-Error-Code`` / ``X-Error-Message`` headers and ``{"error": ...}`` body of the real Hub, so
the client raises its usual classes: ``RepositoryNotFoundError``, ``RevisionNotFoundError``,
``RemoteEntryNotFoundError`` (404s); ``HfHubHTTPError`` for 401/403/409/5xx. Every repo starts with the Hub's
"initial commit" holding ``.gitattributes``. Contents are stored on disk under ``root/blobs`` (git oid) and
``root/lfs`` (sha256), and each commit gets its own snapshot folder ``root/{type}s/{repo_id}/{commit_sha}/`` (see
``snapshot_dir``).

LFS: preupload answers "lfs" like the Hub does (path matches an LFS pattern of the repo's ``.gitattributes``, e.g.
``*.parquet``/``*.safetensors``, or the file is > 10 MB or binary), "regular" otherwise. Answering "regular" for
everything is not an option: ``Dataset.push_to_hub`` deletes each temporary parquet shard right after
``preupload_lfs_files`` and so relies on shards being uploaded before the commit. With Xet disabled the client uses
the git-LFS batch API, served here too; LFS files are then served from ``/resolve`` directly (200, ``ETag`` = sha256)
rather than through a CDN redirect.

Server API (``HubServer``)::

    .url, .root                    base URL (``http://127.0.0.1:PORT``) and storage folder
    .add_user(token, name, orgs)   a user (may write to its own namespace and its orgs); default "tester" with
                                   token "hf_test_token" (``DEFAULT_USER`` / ``DEFAULT_TOKEN``)
    .add_repo(repo_id, repo_type, files=..., private=...)     seed a repo (commit by "system")
    .add_foreign_repo(repo_id, repo_type, ...)                 same, but refuses a namespace a user can write to:
                                   creating it again answers 409, preupload/commit answer 403
    .fail_next(method, path_regex, times=1, status=500, drop=False)   inject failures (``drop`` closes the
                                   connection without an answer, as a dying network would)
    .requests                      list of (method, path) received, path unquoted and without query string
    .responses                     list of (method, path, status) answered
    .blocked                       URLs the fixture's network guard refused (should stay empty)
    .errors                        tracebacks of server-side bugs (answered as 500; should stay empty)
    .files(repo_id, ...)  .commits(repo_id, ...)  .snapshot_dir(repo_id, ...)  .repo_exists(repo_id, ...)

The ``hub_server`` fixture (function scope) starts a server on a free port and points every client at it. Register
it with ``pytest_plugins = ["hub_server"]`` in ``tests/conftest.py`` (a test module may list it too).
huggingface_hub and datasets read their environment **at import time** into module constants, so setting the
environment is not enough; ``patch_hub_clients`` (called by the fixture) monkeypatches:

* env: ``HF_ENDPOINT``, ``HF_TOKEN=hf_test_token``, ``HF_HUB_DISABLE_XET=1``, ``HF_HUB_OFFLINE=0``,
  ``HF_HUB_DISABLE_TELEMETRY=1``, a tmp ``HF_HOME``/``HF_HUB_CACHE``/``HF_DATASETS_CACHE``/``HF_TOKEN_PATH``
  (so subprocesses inherit the same setup; a stored ``hf auth login`` token is never read);
* ``huggingface_hub.constants``: ``ENDPOINT``, ``HUGGINGFACE_CO_URL_TEMPLATE`` (``hf_hub_url``), ``HF_URL_HOSTS``,
  ``HF_HUB_OFFLINE``, ``HF_HUB_DISABLE_XET``, ``HF_HUB_DISABLE_TELEMETRY`` (else the user-agent builder fetches
  ``/api/agent-harnesses``), the cache/token paths; ``utils._http._HUB_ORIGINS``;
* ``huggingface_hub.hf_api.api.endpoint``: the module-level ``HfApi()`` behind ``huggingface_hub.upload_file``,
  ``whoami``, ``create_repo``... (and ``RepoCard.push_to_hub``) froze ``ENDPOINT`` when it was created;
* ``datasets.config``: ``HF_ENDPOINT``, ``HUB_DATASETS_URL``, ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE``, the cache
  paths, ``HF_UPDATE_DOWNLOAD_COUNTS=False`` (``load_dataset`` otherwise HEADs s3.amazonaws.com) and
  ``USE_PARQUET_EXPORT=False`` (``load_dataset`` otherwise asks the dataset viewer at
  ``http://datasets-server.<endpoint host>``, a host this server cannot be);
* the shared HTTP client is closed before and after (``close_session``) and ``HfFileSystem``'s instance cache is
  cleared, so no connection or listing leaks between tests;
* a network guard: the client factories get a request hook refusing any non-loopback URL
  (``NetworkBlockedError``, not retried), and ``socket.getaddrinfo`` refuses non-loopback hosts. Both record the
  target in ``server.blocked``.

``HfApi`` objects created *before* the fixture ran keep their old ``endpoint``: create them inside the code under
test (or pass ``endpoint=``).

Card validation: ``RepoCard.validate()`` / ``RepoCard.push_to_hub()`` post to ``f"{constants.ENDPOINT}/api/
validate-yaml"`` (read at call time, not hard-coded), and ``HfApi.create_commit`` (so ``upload_file`` /
``upload_folder``) posts to ``f"{api.endpoint}/api/validate-yaml"`` whenever a commit adds ``README.md``. With the
fixture both reach this server, which checks the YAML front matter: unparsable YAML or a non-mapping answers 400, which
the client turns into ``ValueError`` (``RepoCard.validate``) or ``ValueError("Invalid metadata in README.md...")``
(``create_commit``). ``fail_next("POST", "/api/validate-yaml", status=400)`` simulates the Hub rejecting a card.
``upload_folder`` validates twice (before hashing, then in ``create_commit``); ``RepoCard.push_to_hub`` too.

Client exceptions seen through this server: no token -> ``LocalTokenNotFoundError`` from ``whoami`` (client-side) and
``HfHubHTTPError`` (401) on writes; unknown token -> ``HfHubHTTPError`` (401, "Invalid user token" from ``whoami``);
foreign repo -> ``create_repo`` 409 ``HfHubHTTPError`` (swallowed with ``exist_ok=True``), upload 403
``HfHubHTTPError`` (the plain class); injected 500 on the commit -> ``HfHubHTTPError`` (not retried by the client);
``drop=True`` on the commit -> ``httpx2.RemoteProtocolError``.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest
import yaml

DEFAULT_TOKEN = "hf_test_token"
DEFAULT_USER = "tester"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
LOCAL_BIND_HOSTS = LOOPBACK_HOSTS | {"", "0.0.0.0", "::"}  # getaddrinfo for binding a local socket

# The Hub answers with this exact message for a bad token; huggingface_hub compares it verbatim.
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
# The Hub's initial commit of every new repo: its .gitattributes, which preupload reads to pick LFS (abridged).
GITATTRIBUTES = b"".join(
    b"%s filter=lfs diff=lfs merge=lfs -text\n" % pattern
    for pattern in (b"*.arrow", b"*.bin", b"*.gguf", b"*.gz", b"*.h5", b"*.npy", b"*.onnx", b"*.parquet")
    + (b"*.pt", b"*.pth", b"*.safetensors", b"*.tar", b"*.zip", b"*.zst")
)
_YAML_BLOCK = re.compile(r"^(\s*---[\r\n]+)([\S\s]*?)([\r\n]+---(\r\n|\n|$))")
_URL_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_REPO_NAME = re.compile(r"^[\w][\w.-]{0,95}$")


class NetworkBlockedError(RuntimeError):
    """Raised by the fixture's guard for a request that would leave the machine.

    Deliberately not an ``httpx2`` network error: huggingface_hub retries those with exponential backoff.
    """


def git_blob_oid(content: bytes) -> str:
    """The git object id of a blob, as the Hub reports it for regular (non-LFS) files."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _card_metadata(content: bytes | str) -> dict | None:
    """The YAML front matter of a README, or None when there is none. Raises yaml.YAMLError / ValueError."""
    text = content.decode("utf-8", errors="replace") if isinstance(content, bytes) else content
    match = _YAML_BLOCK.search(text)
    if match is None:
        return None
    data = yaml.safe_load(match.group(2))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError("repo card metadata block should be a dict")
    return data


@dataclass(frozen=True)
class _File:
    """A file in a commit: ``oid`` is its git object id (of the LFS pointer for LFS files), as the Hub reports it."""

    oid: str
    size: int
    sha256: str | None = None  # set for LFS files, whose content lives under root/lfs/
    pointer_size: int = 0

    @property
    def preupload_oid(self) -> str:
        """What preupload reports: the client compares it to sha256 for LFS files, to the git oid otherwise."""
        return self.sha256 or self.oid


@dataclass
class _Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    author: str
    date: str
    files: dict[str, _File]


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    branches: dict[str, str] = field(default_factory=dict)  # branch name (or refs/pr/N) -> commit oid
    commits: dict[str, _Commit] = field(default_factory=dict)
    next_pr: int = 1


@dataclass
class _Failure:
    method: str
    pattern: re.Pattern[str]
    times: int
    status: int
    drop: bool
    message: str


@dataclass
class _Request:
    method: str
    path: str  # unquoted, no query string
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    params: dict[str, str] = field(default_factory=dict)  # unquoted route groups

    def json(self) -> Any:
        return json.loads(self.body or b"{}")

    def flag(self, name: str) -> bool:
        return (self.query.get(name) or ["false"])[0].lower() in ("1", "true", "yes")


@dataclass
class _Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> _Response:
        return cls(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})


class _HttpError(Exception):
    """Carries an error response out of a route handler."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        extra = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {}), **(headers or {})}
        self.response = _Response.json({"error": message, **(body or {})}, status, extra)


class HubServer:
    """A Hub-compatible server on 127.0.0.1, holding repos in memory and their files under ``root``."""

    def __init__(self, root: str | Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.requests: list[tuple[str, str]] = []
        self.responses: list[tuple[str, str, int]] = []  # (method, path, status); dropped requests have none
        self.blocked: list[str] = []
        self.errors: list[str] = []
        self._lock = threading.RLock()
        self._users: dict[str, str] = {}  # token -> user name
        self._orgs: dict[str, set[str]] = {}  # user name -> orgs it may write to
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._failures: list[_Failure] = []
        self._counter = 0
        self.add_user(DEFAULT_TOKEN, DEFAULT_USER)
        self._httpd = ThreadingHTTPServer((host, port), type("Handler", (_Handler,), {"hub": self}))
        self._httpd.daemon_threads = True
        self.url = f"http://{host}:{self._httpd.server_address[1]}"
        self._thread: threading.Thread | None = None
        self._routes = self._build_routes()

    # ----- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> HubServer:
        """Serve in a daemon thread; returns self."""
        # A short poll interval: shutdown() waits for the serving loop to notice it (0.5 s by default).
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="hub-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- set-up API ------------------------------------------------------------------------------------------

    def add_user(self, token: str, name: str, orgs: tuple[str, ...] | list[str] = ()) -> None:
        """Register ``token`` for user ``name``, member (with write access) of ``orgs``."""
        with self._lock:
            self._users[token] = name
            self._orgs.setdefault(name, set()).update(orgs)

    def add_repo(
        self,
        repo_id: str,
        repo_type: str = "model",
        files: dict[str, bytes | str] | None = None,
        private: bool = False,
    ) -> str:
        """Create ``repo_id`` directly (no user involved), optionally with ``files``; returns the head commit."""
        with self._lock:
            repo = self._create(repo_type, repo_id, private)
            if files:
                ops = [("seedFile", p, d.encode() if isinstance(d, str) else d) for p, d in files.items()]
                return self._apply_commit(repo, "main", ops, "Add files", "", "system", create_pr=False)[0]
            return repo.branches["main"]

    def add_foreign_repo(
        self,
        repo_id: str,
        repo_type: str = "model",
        files: dict[str, bytes | str] | None = None,
        private: bool = False,
    ) -> str:
        """A repo owned by a namespace no registered user can write to: create -> 409, upload -> 403."""
        namespace = repo_id.split("/")[0]
        with self._lock:
            writers = [name for name in self._orgs if namespace == name or namespace in self._orgs[name]]
        if writers:
            raise ValueError(f"{namespace!r} is writable by {writers}; a foreign repo needs another namespace")
        return self.add_repo(repo_id, repo_type, files, private)

    def fail_next(
        self,
        method: str,
        path_regex: str,
        times: int = 1,
        status: int = 500,
        drop: bool = False,
        message: str = "Injected failure (hub_server.fail_next)",
    ) -> None:
        """Make the next ``times`` requests matching ``method`` ("*" for any) and ``path_regex`` fail.

        The regex is searched in the unquoted path (no query string), e.g. ``r"/commit/"``. With ``drop=True`` the
        server reads the request and closes the connection without answering (the client sees a disconnect);
        otherwise it answers ``status`` with a JSON error body. Note that huggingface_hub retries 5xx on some
        endpoints by itself (preupload, tree listing, downloads: ``http_backoff``, first retry after 1 s) but not on
        the commit POST.
        """
        with self._lock:
            self._failures.append(_Failure(method.upper(), re.compile(path_regex), times, status, drop, message))

    # ----- inspection API --------------------------------------------------------------------------------------

    def repo_exists(self, repo_id: str, repo_type: str = "model") -> bool:
        with self._lock:
            return (repo_type, repo_id) in self._repos

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """Path -> content of every file at ``revision``."""
        with self._lock:
            commit = self._commit_at(self._repos[(repo_type, repo_id)], revision)
            return {path: self._content_path(f).read_bytes() for path, f in sorted(commit.files.items())}

    def commits(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> list[str]:
        """Commit titles reachable from ``revision``, newest first (the last one is "initial commit")."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            return [commit.title for commit in self._history(repo, self._commit_at(repo, revision))]

    def snapshot_dir(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> Path:
        """The on-disk folder holding the files of ``revision`` (one folder per commit)."""
        with self._lock:
            commit = self._commit_at(self._repos[(repo_type, repo_id)], revision)
            return self.root / f"{repo_type}s" / repo_id / commit.oid

    # ----- storage ---------------------------------------------------------------------------------------------

    def _content_path(self, f: _File) -> Path:
        if f.sha256 is not None:
            return self._lfs_path(f.sha256)
        return self.root / "blobs" / f.oid[:2] / f.oid

    def _lfs_path(self, sha256: str) -> Path:
        return self.root / "lfs" / sha256[:2] / sha256

    @staticmethod
    def _write_atomic(path: Path, content: bytes) -> None:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{threading.get_ident()}")
            tmp.write_bytes(content)
            os.replace(tmp, path)

    def _store_regular(self, content: bytes) -> _File:
        f = _File(git_blob_oid(content), len(content))
        self._write_atomic(self._content_path(f), content)
        return f

    def _store_lfs(self, content: bytes) -> _File:
        sha256 = hashlib.sha256(content).hexdigest()
        self._write_atomic(self._lfs_path(sha256), content)
        return self._lfs_file(sha256, len(content))

    @staticmethod
    def _lfs_file(sha256: str, size: int) -> _File:
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
        return _File(git_blob_oid(pointer), size, sha256, len(pointer))

    def _is_lfs(self, commit: _Commit, path: str, size: int, sample: bytes) -> bool:
        """The Hub's rule: LFS when .gitattributes says so, when the file is large, or when it looks binary."""
        if size > 10 * 1024 * 1024 or b"\0" in sample:
            return True
        attributes = commit.files.get(".gitattributes")
        if attributes is None:
            return False
        for line in self._content_path(attributes).read_text(errors="replace").splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            pattern, *attrs = line.split()
            if "filter=lfs" in attrs and fnmatch.fnmatch(path if "/" in pattern else path.rsplit("/", 1)[-1], pattern):
                return True
        return False

    def _write_snapshot(self, repo: _Repo, commit: _Commit) -> None:
        folder = self.root / f"{repo.repo_type}s" / repo.repo_id / commit.oid
        for path, f in commit.files.items():
            target = folder / path
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(self._content_path(f), target)  # stored contents are immutable: a hard link is a free copy
            except OSError:
                shutil.copyfile(self._content_path(f), target)

    def _create(self, repo_type: str, repo_id: str, private: bool) -> _Repo:
        if (repo_type, repo_id) in self._repos:
            raise ValueError(f"{repo_type} repo {repo_id} already exists")
        repo = _Repo(repo_type, repo_id, private, _now())
        self._repos[(repo_type, repo_id)] = repo
        attributes = {".gitattributes": self._store_regular(GITATTRIBUTES)}
        commit = self._new_commit(None, "initial commit", "", "system", attributes)
        repo.commits[commit.oid] = commit
        repo.branches["main"] = commit.oid
        self._write_snapshot(repo, commit)
        return repo

    def _new_commit(
        self, parent: str | None, title: str, message: str, author: str, files: dict[str, _File]
    ) -> _Commit:
        self._counter += 1  # two identical commits still get distinct ids, like git's timestamps would give
        listing = sorted((path, f.oid) for path, f in files.items())
        seed = json.dumps([parent, title, message, author, listing, self._counter]).encode()
        return _Commit(hashlib.sha1(seed).hexdigest(), parent, title, message, author, _now(), files)

    def _apply_commit(
        self,
        repo: _Repo,
        branch: str,
        ops: list[tuple[str, str, bytes]],
        title: str,
        message: str,
        author: str,
        create_pr: bool,
        parent_commit: str | None = None,
    ) -> tuple[str, int | None]:
        """Apply (kind, path, content) operations on ``branch``; returns (commit oid, PR number or None)."""
        head = self._commit_at(repo, branch)
        if parent_commit is not None and not head.oid.startswith(parent_commit):
            raise _HttpError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(head.files)
        for kind, path, content in ops:
            if kind == "file":
                files[path] = self._store_regular(content)
            elif kind == "lfsFile":
                sha256, size = content.decode().split(":")
                if not self._lfs_path(sha256).exists():
                    raise _HttpError(422, f"LFS object {sha256} was not uploaded (file {path})")
                files[path] = self._lfs_file(sha256, int(size))
            elif kind == "seedFile":  # add_repo: stored the way an upload would have stored it
                is_lfs = self._is_lfs(head, path, len(content), content[:512])
                files[path] = self._store_lfs(content) if is_lfs else self._store_regular(content)
            elif kind == "deletedFile":
                if files.pop(path, None) is None:
                    raise _HttpError(404, "A file with this name doesn't exist", "EntryNotFound")
            elif kind == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                doomed = [p for p in files if p.startswith(prefix)]
                if not doomed:
                    raise _HttpError(404, "A file with this name doesn't exist", "EntryNotFound")
                for p in doomed:
                    del files[p]
        commit = self._new_commit(head.oid, title, message, author, files)
        repo.commits[commit.oid] = commit
        pr_num = None
        if create_pr:
            pr_num, repo.next_pr = repo.next_pr, repo.next_pr + 1
            repo.branches[f"refs/pr/{pr_num}"] = commit.oid
        else:
            repo.branches[branch] = commit.oid
        self._write_snapshot(repo, commit)
        return commit.oid, pr_num

    def _commit_at(self, repo: _Repo, revision: str) -> _Commit:
        if revision in repo.branches:
            return repo.commits[repo.branches[revision]]
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            matches = [oid for oid in repo.commits if oid.startswith(revision)]
            if len(matches) == 1:
                return repo.commits[matches[0]]
        raise _HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _history(self, repo: _Repo, commit: _Commit) -> Iterator[_Commit]:
        current: _Commit | None = commit
        while current is not None:
            yield current
            current = repo.commits[current.parent] if current.parent else None

    def _last_commit(self, repo: _Repo, commit: _Commit, path: str, is_dir: bool) -> dict[str, str]:
        """The most recent commit (from ``commit`` back) that changed ``path``, as the tree API's lastCommit."""

        def state(c: _Commit) -> Any:
            if is_dir:
                return sorted((p, o) for p, o in c.files.items() if p.startswith(path + "/"))
            return c.files.get(path)

        found = commit
        for older in self._history(repo, commit):
            if state(older) != state(commit):
                break
            found = older
        return {"id": found.oid, "title": found.title, "date": found.date}

    # ----- request plumbing ------------------------------------------------------------------------------------

    def _take_failure(self, method: str, path: str) -> _Failure | None:
        with self._lock:
            for failure in self._failures:
                if failure.method in ("*", method) and failure.pattern.search(path):
                    failure.times -= 1
                    if failure.times <= 0:
                        self._failures.remove(failure)
                    return failure
        return None

    def _build_routes(self) -> list[tuple[set[str], re.Pattern[str], Callable[[_Request], _Response]]]:
        t = r"(?P<type>models|datasets|spaces)"
        repo = r"(?P<repo>[^/]+/[^/]+)"
        api = rf"^/api/{t}/{repo}"
        web = rf"^/(?:(?P<type>datasets|spaces)/)?{repo}"  # web URLs: models have no type prefix
        table: list[tuple[str, str, Callable[[_Request], _Response]]] = [
            ("GET", r"^/api/whoami-v2$", self._whoami),
            ("POST", r"^/api/repos/create$", self._create_repo),
            ("DELETE", r"^/api/repos/delete$", self._delete_repo),
            ("POST", r"^/api/validate-yaml$", self._validate_yaml),
            ("GET", r"^/api/agent-harnesses$", lambda req: _Response.json({"standardEnvVars": [], "harnesses": {}})),
            ("GET", rf"{api}(?:/revision/(?P<rev>[^/]+))?$", self._repo_info),
            ("GET", rf"{api}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$", self._tree),
            ("POST", rf"{api}/paths-info/(?P<rev>[^/]+)$", self._paths_info),
            ("POST", rf"{api}/preupload/(?P<rev>[^/]+)$", self._preupload),
            ("POST", rf"{api}/commit/(?P<rev>[^/]+)$", self._commit),
            ("POST DELETE", rf"{api}/branch/(?P<branch>[^/]+)$", self._branch),
            ("GET", rf"{api}/refs$", self._refs),
            ("GET", rf"{api}/commits/(?P<rev>[^/]+)$", self._list_commits),
            ("GET HEAD", rf"{web}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", self._resolve),
            ("POST", rf"{web}\.git/info/lfs/objects/batch$", self._lfs_batch),
            ("POST", rf"{web}\.git/info/lfs/objects/verify$", self._lfs_verify),
            ("PUT", r"^/lfs-upload/(?P<sha256>[0-9a-f]{64})$", self._lfs_upload),
        ]
        return [(set(methods.split()), re.compile(pattern), handler) for methods, pattern, handler in table]

    def _handle(self, method: str, raw_path: str, query: str, headers: dict[str, str], body: bytes) -> _Response:
        for methods, pattern, handler in self._routes:
            match = pattern.match(raw_path)
            if match and method in methods:
                params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                request = _Request(method, unquote(raw_path), parse_qs(query, keep_blank_values=True), headers, body)
                request.params = params
                try:
                    with self._lock:
                        return handler(request)
                except _HttpError as err:
                    return err.response
        return _HttpError(404, "Sorry, we can't find the page you are looking for.").response

    # ----- auth helpers ----------------------------------------------------------------------------------------

    def _user(self, req: _Request) -> str | None:
        """The authenticated user, None when anonymous; an unknown token is refused on every endpoint."""
        header = req.headers.get("authorization")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or token not in self._users:
            raise _HttpError(401, INVALID_CREDENTIALS)
        return self._users[token]

    def _can_write(self, user: str | None, repo_id: str) -> bool:
        namespace = repo_id.split("/")[0]
        return user is not None and (namespace == user or namespace in self._orgs.get(user, set()))

    def _repo(self, req: _Request, write: bool = False) -> tuple[_Repo, str | None]:
        user = self._user(req)
        repo_type = _URL_TYPES[req.params.get("type", "models")]
        repo = self._repos.get((repo_type, req.params["repo"]))
        if repo is None or (repo.private and not self._can_write(user, repo.repo_id)):
            # Like the Hub: 401 when anonymous, 404 otherwise; the error code makes both RepositoryNotFoundError.
            raise _HttpError(401 if user is None else 404, "Repository not found", "RepoNotFound")
        if write and user is None:
            raise _HttpError(401, "You must be authenticated to write to a repository")
        if write and not self._can_write(user, repo.repo_id):
            raise _HttpError(403, f"You don't have the rights to write to the {repo_type} repo {repo.repo_id}")
        return repo, user

    def _repo_url(self, repo: _Repo) -> str:
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        return f"{self.url}/{prefix}{repo.repo_id}"

    # ----- routes ----------------------------------------------------------------------------------------------

    def _whoami(self, req: _Request) -> _Response:
        user = self._user(req)
        if user is None:
            raise _HttpError(401, "You must be authenticated to access this resource")
        return _Response.json(
            {
                "type": "user",
                "id": hashlib.sha1(user.encode()).hexdigest()[:24],
                "name": user,
                "fullname": user.title(),
                "email": f"{user}@example.com",
                "emailVerified": True,
                "isPro": False,
                "orgs": [{"type": "org", "name": org, "roleInOrg": "write"} for org in sorted(self._orgs[user])],
                "auth": {"type": "access_token", "accessToken": {"displayName": "hub_server", "role": "write"}},
            }
        )

    def _create_repo(self, req: _Request) -> _Response:
        user = self._user(req)
        if user is None:
            raise _HttpError(401, "You must be authenticated to create a repository")
        body = req.json()
        repo_type = body.get("type") or "model"
        name = body.get("name") or ""
        if repo_type not in ("model", "dataset", "space") or not _REPO_NAME.match(name):
            raise _HttpError(400, f"Invalid repo type or name: {repo_type!r} {name!r}")
        repo_id = f"{body.get('organization') or user}/{name}"
        existing = self._repos.get((repo_type, repo_id))
        if existing is not None:
            # create_repo(exist_ok=True) swallows the 409 and then reads "url" from this very body.
            raise _HttpError(409, f"You already created this {repo_type} repo", body={"url": self._repo_url(existing)})
        if not self._can_write(user, repo_id):
            namespace = repo_id.split("/")[0]
            message = f'You don\'t have the rights to create a {repo_type} under the namespace "{namespace}"'
            raise _HttpError(403, message)
        private = bool(body.get("private")) or body.get("visibility") == "private"
        repo = self._create(repo_type, repo_id, private)
        return _Response.json({"url": self._repo_url(repo), "name": repo_id, "id": repo_id})

    def _delete_repo(self, req: _Request) -> _Response:
        user = self._user(req)
        body = req.json()
        repo_id = f"{body.get('organization') or user}/{body.get('name')}"
        key = (body.get("type") or "model", repo_id)
        if key not in self._repos:
            raise _HttpError(404, "Repository not found", "RepoNotFound")
        if not self._can_write(user, repo_id):
            raise _HttpError(403, f"You don't have the rights to delete {repo_id}")
        del self._repos[key]
        return _Response.json({})

    def _validate_yaml(self, req: _Request) -> _Response:
        try:
            _card_metadata(req.json().get("content") or "")
        except (yaml.YAMLError, ValueError) as err:
            message = f"Invalid YAML in README.md: {err}"
            return _Response.json({"error": message, "errors": [{"message": message}]}, 400)
        return _Response.json({"errors": [], "warnings": []})

    def _repo_info(self, req: _Request) -> _Response:
        repo, _ = self._repo(req)
        commit = self._commit_at(repo, req.params.get("rev", "main"))
        blobs = req.flag("blobs")
        siblings = []
        for path, f in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=f.size, blobId=f.oid)
                if f.sha256 is not None:
                    sibling["lfs"] = {"size": f.size, "sha256": f.sha256, "pointerSize": f.pointer_size}
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.oid,
            "createdAt": repo.created_at,
            "lastModified": commit.date,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(f.size for f in commit.files.values()),
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        if "README.md" in commit.files:
            try:
                card = _card_metadata(self._content_path(commit.files["README.md"]).read_bytes())
            except (yaml.YAMLError, ValueError):
                card = None
            if card:
                info["cardData"] = card
                if isinstance(card.get("tags"), list):
                    info["tags"] = [str(tag) for tag in card["tags"]]
                if repo.repo_type == "model" and isinstance(card.get("library_name"), str):
                    info["library_name"] = card["library_name"]
        return _Response.json(info)

    def _entries(self, repo: _Repo, commit: _Commit, paths: list[str], expand: bool) -> list[dict[str, Any]]:
        """Tree API entries (files and directories) for ``paths`` that exist in ``commit``."""
        entries = []
        for path in paths:
            if path in commit.files:
                f = commit.files[path]
                entry: dict[str, Any] = {"type": "file", "oid": f.oid, "size": f.size, "path": path}
                if f.sha256 is not None:
                    entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
            else:
                content = sorted((p, f.oid) for p, f in commit.files.items() if p.startswith(path + "/"))
                tree_oid = hashlib.sha1(json.dumps(content).encode()).hexdigest()
                entry = {"type": "directory", "oid": tree_oid, "size": 0, "path": path}
            if expand:
                entry["lastCommit"] = self._last_commit(repo, commit, path, entry["type"] == "directory")
            entries.append(entry)
        return entries

    def _tree(self, req: _Request) -> _Response:
        repo, _ = self._repo(req)
        commit = self._commit_at(repo, req.params["rev"])
        base = req.params.get("path", "").strip("/")
        prefix = base + "/" if base else ""
        if base and not any(p.startswith(prefix) for p in commit.files):
            raise _HttpError(404, f"Entry not found: {base}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        recursive = req.flag("recursive")
        found: set[str] = set()
        for path in commit.files:
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            depth = len(parts) if recursive else 1
            for i in range(1, depth + 1):
                found.add(prefix + "/".join(parts[:i]))
        return _Response.json(self._entries(repo, commit, sorted(found), req.flag("expand")))

    def _paths_info(self, req: _Request) -> _Response:
        repo, _ = self._repo(req)
        commit = self._commit_at(repo, req.params["rev"])
        if req.headers.get("content-type", "").startswith("application/json"):
            payload = req.json()
            paths, expand = payload.get("paths", []), bool(payload.get("expand"))
        else:
            form = parse_qs(req.body.decode(), keep_blank_values=True)
            paths, expand = form.get("paths", []), (form.get("expand") or ["false"])[0].lower() == "true"
        existing = []
        for path in dict.fromkeys(p.strip("/") for p in paths):
            if path in commit.files or any(p.startswith(path + "/") for p in commit.files):
                existing.append(path)
        return _Response.json(self._entries(repo, commit, existing, expand))

    def _preupload(self, req: _Request) -> _Response:
        repo, _ = self._repo(req, write=True)
        commit = self._commit_at(repo, req.params["rev"])
        files = []
        for item in req.json().get("files", []):
            sample = base64.b64decode(item.get("sample") or "")
            lfs = self._is_lfs(commit, item["path"], int(item.get("size") or 0), sample)
            entry = {"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
            if item["path"] in commit.files:  # lets the client skip files that did not change
                entry["oid"] = commit.files[item["path"]].preupload_oid
            files.append(entry)
        return _Response.json({"files": files, "commitOid": commit.oid})

    def _commit(self, req: _Request) -> _Response:
        repo, user = self._repo(req, write=True)
        branch = req.params["rev"]
        if branch not in repo.branches:
            raise _HttpError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        header: dict[str, Any] = {}
        ops: list[tuple[str, str, bytes]] = []
        for line in req.body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                content = value["content"]
                data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                ops.append(("file", value["path"], data))
            elif key in ("deletedFile", "deletedFolder"):
                ops.append((key, value["path"], b""))
            elif key == "lfsFile":
                size = value.get("size")
                if size is None:  # a copy of an LFS file sends no size: take it from the stored object
                    path = self._lfs_path(value["oid"])
                    size = path.stat().st_size if path.exists() else 0
                ops.append(("lfsFile", value["path"], f"{value['oid']}:{size}".encode()))
            else:
                raise _HttpError(400, f"Unknown commit operation {key!r}")
        if not header.get("summary"):
            raise _HttpError(400, "Commit summary is required")
        create_pr = req.flag("create_pr")
        oid, pr_num = self._apply_commit(
            repo,
            branch,
            ops,
            header["summary"],
            header.get("description", ""),
            user or "anonymous",
            create_pr,
            header.get("parentCommit"),
        )
        url = self._repo_url(repo)
        return _Response.json(
            {
                "success": True,
                "commitOid": oid,
                "commitUrl": f"{url}/commit/{oid}",
                "hookOutput": "",
                "pullRequestUrl": f"{url}/discussions/{pr_num}" if pr_num is not None else None,
            }
        )

    def _branch(self, req: _Request) -> _Response:
        repo, _ = self._repo(req, write=True)
        branch = req.params["branch"]
        if req.method == "DELETE":
            if branch not in repo.branches or branch == "main":
                raise _HttpError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            del repo.branches[branch]
            return _Response.json({})
        if branch in repo.branches:
            raise _HttpError(409, "Reference already exists")
        start = (req.json() or {}).get("startingPoint") or "main"
        repo.branches[branch] = self._commit_at(repo, start).oid
        return _Response.json({})

    def _refs(self, req: _Request) -> _Response:
        repo, _ = self._repo(req)
        include_prs = req.flag("include_prs")
        branches = []
        pulls = []
        for name, oid in sorted(repo.branches.items()):
            if name.startswith("refs/pr/"):
                pulls.append({"name": name, "ref": name, "targetCommit": oid})
            else:
                branches.append({"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid})
        refs: dict[str, Any] = {"branches": branches, "converts": [], "tags": []}
        if include_prs:
            refs["pullRequests"] = pulls
        return _Response.json(refs)

    def _list_commits(self, req: _Request) -> _Response:
        repo, _ = self._repo(req)
        head = self._commit_at(repo, req.params["rev"])
        return _Response.json(
            [
                {"id": c.oid, "title": c.title, "message": c.message, "authors": [{"user": c.author}], "date": c.date}
                for c in self._history(repo, head)
            ]
        )

    def _resolve(self, req: _Request) -> _Response:
        repo, _ = self._repo(req)
        commit = self._commit_at(repo, req.params["rev"])
        path = req.params["path"]
        if path not in commit.files:
            raise _HttpError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        f = commit.files[path]
        content = self._content_path(f).read_bytes()
        name = path.rsplit("/", 1)[-1]
        headers = {
            "Content-Type": "application/octet-stream",
            # The Hub's etag is the git oid, or the sha256 for LFS files (served here directly, not via a CDN).
            "ETag": f'"{f.sha256 or f.oid}"',
            "X-Repo-Commit": commit.oid,
            "Accept-Ranges": "bytes",
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(name)}; filename=\"{name}\"",
        }
        range_header = req.headers.get("range")
        if range_header:
            match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", range_header)
            if match is None or not any(match.groups()):
                raise _HttpError(400, f"Unsupported Range header {range_header!r}")
            start_s, end_s = match.groups()
            size = len(content)
            if start_s:
                start, end = int(start_s), min(int(end_s) if end_s else size - 1, size - 1)
            else:  # suffix range: the last N bytes
                start, end = max(size - int(end_s), 0), size - 1
            if start >= size or start > end:
                return _Response(416, b"", {**headers, "Content-Range": f"bytes */{size}"})
            return _Response(206, content[start : end + 1], {**headers, "Content-Range": f"bytes {start}-{end}/{size}"})
        return _Response(200, content, headers)

    # Git LFS basic transfer (https://github.com/git-lfs/git-lfs/blob/main/docs/api/batch.md), used when Xet is off.

    def _lfs_batch(self, req: _Request) -> _Response:
        repo, _ = self._repo(req, write=True)
        payload = req.json()
        if payload.get("operation") != "upload":
            raise _HttpError(400, "hub_server only implements LFS uploads (downloads go through /resolve)")
        objects = []
        for obj in payload.get("objects", []):
            sha256, size = obj["oid"], int(obj["size"])
            entry: dict[str, Any] = {"oid": sha256, "size": size, "authenticated": True}
            stored = self._lfs_path(sha256)
            if not (stored.exists() and stored.stat().st_size == size):  # no actions: already uploaded
                entry["actions"] = {
                    "upload": {"href": f"{self.url}/lfs-upload/{sha256}"},
                    "verify": {"href": f"{self._repo_url(repo)}.git/info/lfs/objects/verify"},
                }
            objects.append(entry)
        body = {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}
        return _Response.json(body, headers={"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_upload(self, req: _Request) -> _Response:
        # Stands for the pre-signed storage URL of the real Hub: no auth, the content must match its sha256.
        sha256 = req.params["sha256"]
        if hashlib.sha256(req.body).hexdigest() != sha256:
            raise _HttpError(400, f"Uploaded content does not match sha256 {sha256}")
        self._write_atomic(self._lfs_path(sha256), req.body)
        return _Response(200)

    def _lfs_verify(self, req: _Request) -> _Response:
        self._repo(req, write=True)
        payload = req.json()
        stored = self._lfs_path(payload.get("oid", ""))
        if not (stored.exists() and stored.stat().st_size == payload.get("size")):
            raise _HttpError(404, "LFS object not found")
        return _Response.json({})


class _Handler(BaseHTTPRequestHandler):
    """Parses HTTP, applies injected failures, and hands the request to ``HubServer._handle``."""

    hub: HubServer
    protocol_version = "HTTP/1.1"  # keep-alive, like the real Hub; every answer carries Content-Length

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature fixed by the base class
        pass  # the request log is HubServer.requests; stderr noise would only clutter pytest output

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        hub = self.hub
        split = urlsplit(self.path)
        path = unquote(split.path)
        body = self._read_body()  # read even when failing, so the client is not stuck writing
        with hub._lock:
            hub.requests.append((self.command, path))
        failure = hub._take_failure(self.command, path)
        if failure is not None and failure.drop:
            self.close_connection = True  # no answer at all: the client sees the server disconnect
            return
        if failure is not None:
            # 400 bodies carry the "errors" list too, which validate-yaml's callers read.
            body = {"errors": [{"message": failure.message}]} if failure.status == 400 else None
            response = _HttpError(failure.status, failure.message, body=body).response
        else:
            try:
                headers = {k.lower(): v for k, v in self.headers.items()}
                response = hub._handle(self.command, split.path, split.query, headers, body)
            except Exception:  # a bug in this server: answer 500 and keep the traceback for the test to show
                hub.errors.append(traceback.format_exc())
                response = _Response.json({"error": "hub_server internal error"}, 500)
        with hub._lock:
            hub.responses.append((self.command, path, response.status))
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)


# ----- client configuration and the pytest fixture ----------------------------------------------------------------


def patch_hub_clients(monkeypatch: pytest.MonkeyPatch, server: HubServer, home: Path) -> None:
    """Point huggingface_hub and datasets (env and import-time constants) at ``server``; see the module docstring."""
    from huggingface_hub import HfFileSystem, constants
    from huggingface_hub import hf_api as hf_api_module
    from huggingface_hub.utils import _http

    url = server.url
    host = urlsplit(url).hostname or "127.0.0.1"
    paths = {
        "home": home,
        "hub": home / "hub",
        "assets": home / "assets",
        "xet": home / "xet",
        "datasets": home / "datasets",
        "modules": home / "modules",
        "token": home / "token",
    }
    env = {
        "HF_ENDPOINT": url,
        "HF_TOKEN": DEFAULT_TOKEN,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_UPDATE_DOWNLOAD_COUNTS": "0",
        "HF_HOME": str(paths["home"]),
        "HF_HUB_CACHE": str(paths["hub"]),
        "HF_ASSETS_CACHE": str(paths["assets"]),
        "HF_XET_CACHE": str(paths["xet"]),
        "HF_DATASETS_CACHE": str(paths["datasets"]),
        "HF_MODULES_CACHE": str(paths["modules"]),
        "HF_TOKEN_PATH": str(paths["token"]),
        "NO_PROXY": ",".join(sorted(LOOPBACK_HOSTS)),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HUGGINGFACE_CO_STAGING", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)

    # huggingface_hub: constants read once at import, used at call time through `constants.X`.
    for name, value in {
        "ENDPOINT": url,
        "HUGGINGFACE_CO_URL_TEMPLATE": url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": constants.HF_URL_HOSTS | {host},
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": False,
        "HF_HUB_DISABLE_UPDATE_CHECK": True,
        "HF_HOME": str(paths["home"]),
        "HF_HUB_CACHE": str(paths["hub"]),
        "HUGGINGFACE_HUB_CACHE": str(paths["hub"]),
        "HF_ASSETS_CACHE": str(paths["assets"]),
        "HUGGINGFACE_ASSETS_CACHE": str(paths["assets"]),
        "HF_XET_CACHE": str(paths["xet"]),
        "HF_TOKEN_PATH": str(paths["token"]),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
        "CHECK_FOR_UPDATE_DONE_PATH": str(home / ".check_for_update_done"),
        "CHECK_FOR_SKILL_UPDATE_DONE_PATH": str(home / ".check_for_skill_update_done"),
    }.items():
        monkeypatch.setattr(constants, name, value, raising=False)
    # Names copied with `from ..constants import X` at import time.
    for module_name, attr, value in (
        ("huggingface_hub.utils._cache_manager", "HF_HUB_CACHE", str(paths["hub"])),
        ("huggingface_hub.utils._cache_assets", "HF_ASSETS_CACHE", str(paths["assets"])),
        ("huggingface_hub.utils._git_credential", "ENDPOINT", url),
    ):
        if module_name in sys.modules and hasattr(sys.modules[module_name], attr):
            monkeypatch.setattr(sys.modules[module_name], attr, value)
    # The module-level HfApi() behind huggingface_hub.upload_file/whoami/... froze the endpoint at import.
    monkeypatch.setattr(hf_api_module.api, "endpoint", url)
    monkeypatch.setattr(_http, "_HUB_ORIGINS", _http._HUB_ORIGINS | {_http._url_origin(url)})
    detect_agent = sys.modules.get("huggingface_hub.utils._detect_agent")
    if detect_agent is not None:  # no registry fetch, whatever the telemetry setting
        monkeypatch.setattr(detect_agent, "_registry", {"standardEnvVars": [], "harnesses": {}})

    # Network guard, part 1: every huggingface_hub HTTP client refuses non-loopback URLs (fast, never retried).
    def refuse_external(request: Any) -> None:
        if request.url.host not in LOOPBACK_HOSTS:
            server.blocked.append(str(request.url))
            raise NetworkBlockedError(f"hub_server fixture: refused a request to {request.url}")

    async def refuse_external_async(request: Any) -> None:
        refuse_external(request)

    sync_factory, async_factory = _http._GLOBAL_CLIENT_FACTORY, _http._GLOBAL_ASYNC_CLIENT_FACTORY

    def guarded_client() -> Any:
        client = sync_factory()
        client.event_hooks["request"].insert(0, refuse_external)
        return client

    def guarded_async_client() -> Any:
        client = async_factory()
        client.event_hooks["request"].insert(0, refuse_external_async)
        return client

    _http.close_session()  # the shared client may hold connections (and proxies) from before
    monkeypatch.setattr(_http, "_GLOBAL_CLIENT_FACTORY", guarded_client)
    monkeypatch.setattr(_http, "_GLOBAL_ASYNC_CLIENT_FACTORY", guarded_async_client)

    # Network guard, part 2: anything else (aiohttp, requests, urllib) cannot even resolve a non-loopback host.
    real_getaddrinfo = socket.getaddrinfo

    def loopback_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and name not in LOCAL_BIND_HOSTS:
            server.blocked.append(str(name))
            raise socket.gaierror(socket.EAI_NONAME, f"hub_server fixture: refused to resolve {name}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_getaddrinfo)

    # datasets keeps its own copies, and two calls that would leave the machine (see the module docstring).
    try:
        from datasets import config as ds_config
    except ImportError:  # pragma: no cover - datasets is a project dependency
        ds_config = None
    if ds_config is not None:
        for name, value in {
            "HF_ENDPOINT": url,
            "HUB_DATASETS_URL": url + "/datasets/{repo_id}/resolve/{revision}/{path}",
            "HF_HUB_OFFLINE": False,
            "HF_DATASETS_OFFLINE": False,
            "HF_CACHE_HOME": str(paths["home"]),
            "HF_DATASETS_CACHE": paths["datasets"],
            "HF_MODULES_CACHE": paths["modules"],
            "DOWNLOADED_DATASETS_PATH": paths["datasets"] / "downloads",
            "EXTRACTED_DATASETS_PATH": paths["datasets"] / "downloads" / "extracted",
            "HF_UPDATE_DOWNLOAD_COUNTS": False,
            "USE_PARQUET_EXPORT": False,
        }.items():
            monkeypatch.setattr(ds_config, name, value)

    HfFileSystem.clear_instance_cache()  # cached instances carry listings (dircache) of earlier servers


@pytest.fixture
def hub_server(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """A running ``HubServer`` that huggingface_hub and datasets talk to, as user "tester" (token hf_test_token)."""
    from huggingface_hub import HfFileSystem
    from huggingface_hub.utils import close_session

    storage = tmp_path_factory.mktemp("hub-server")
    home = tmp_path_factory.mktemp("hf-home")
    with HubServer(storage) as server:
        patch_hub_clients(monkeypatch, server, home)
        try:
            yield server
        finally:
            # Before monkeypatch restores the real endpoint: drop connections and listings tied to this server.
            close_session()
            HfFileSystem.clear_instance_cache()
