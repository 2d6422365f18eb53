"""A fake Hugging Face Hub on localhost, for download (and later upload) tests without the internet.

``FakeHub`` keeps model repos in memory (``repos[repo_id][path] = bytes``) and answers over HTTP
the requests ``huggingface_hub`` makes.  Routes are a table of (method, regex, handler):

* downloads: ``GET``/``HEAD /{repo_id}/resolve/{revision}/{filename}``, with the ``X-Repo-Commit``,
  ``ETag`` and ``Content-Length`` headers ``hf_hub_download`` requires, and 404s carrying the
  ``X-Error-Code`` it maps to RepositoryNotFound / RevisionNotFound / EntryNotFound;
* uploads (``HfApi.create_repo`` + ``upload_folder``, or ``CommitScheduler``): ``POST /api/repos/create``,
  ``/api/{models,datasets}/{repo_id}/preupload/{rev}`` (every file "regular", so no LFS/Xet) and
  ``/api/{models,datasets}/{repo_id}/commit/{rev}`` (NDJSON with base64 file contents; model and dataset
  repos share one namespace here), and
  ``POST /api/validate-yaml``, which ``upload_folder`` calls for a README.md (its YAML front matter
  must parse to a mapping, else a 400 with the Hub's ``errors`` list).

More endpoints are added the same way: ``hub.route("GET", r"^/api/models/...$")(handler)``.

The ``fake_hub`` fixture starts a server, points ``huggingface_hub`` at it (``HF_ENDPOINT`` and
the module constants read at import) and puts the Hub cache in the test's tmp folder.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Callable
from urllib.parse import unquote, urlsplit

import pytest


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] | None = None

    @classmethod
    def json(cls, obj, status: int = 200, headers: dict[str, str] | None = None) -> "Response":
        return cls(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

    @classmethod
    def error(cls, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> "Response":
        return cls.json({"error": message}, status, {"X-Error-Code": code, "X-Error-Message": message, **(headers or {})})


@dataclass
class Request:
    method: str
    path: str  # URL path, percent-decoded
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body or b"null")


Handler = Callable[[Request, re.Match], Response]


class FakeHub:
    """An in-memory Hub: model repos as {path: bytes}, served by a threaded HTTP server."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}  # the main revision's files
        self.snapshots: dict[str, dict[str, dict[str, bytes]]] = {}  # repo -> commit -> files, every commit kept
        self.tags: dict[tuple[str, str], str] = {}  # (repo, tag) -> commit
        self.private: dict[str, bool] = {}  # repo -> created private (the request's visibility, or its older private flag)
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for assertions
        self.routes: list[tuple[str, re.Pattern, Handler]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.route("GET", r"^/(?P<repo_id>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<filename>.+)$")(self._resolve)
        self.route("HEAD", r"^/(?P<repo_id>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<filename>.+)$")(self._resolve)
        self.route("POST", r"^/api/repos/create$")(self._create_repo)
        self.route("POST", r"^/api/(?:models|datasets)/(?P<repo_id>[^/]+/[^/]+)/preupload/(?P<revision>[^/]+)$")(self._preupload)
        self.route("POST", r"^/api/(?:models|datasets)/(?P<repo_id>[^/]+/[^/]+)/commit/(?P<revision>[^/]+)$")(self._commit)
        self.route("POST", r"^/api/validate-yaml$")(self._validate_yaml)

    # ---- repos --------------------------------------------------------------------------------
    def add_repo(self, repo_id: str, files: dict[str, bytes] | None = None) -> None:
        """Create the repo, or replace its main revision's files (a new commit; earlier ones stay resolvable)."""
        self.repos[repo_id] = dict(files or {})
        self._remember(repo_id)

    def _remember(self, repo_id: str) -> None:
        self.snapshots.setdefault(repo_id, {})[self.commit_of(repo_id)] = dict(self.repos[repo_id])

    def tag(self, repo_id: str, name: str) -> str:
        """Tag the repo's current commit; returns the commit."""
        self.tags[(repo_id, name)] = commit = self.commit_of(repo_id)
        return commit

    def add_folder(self, repo_id: str, folder: str | Path) -> None:
        """Publish every file of a local folder (e.g. a checkpoint) as the repo's main revision."""
        folder = Path(folder)
        self.add_repo(repo_id, {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()})

    def commit_of(self, repo_id: str) -> str:
        """A 40-hex commit id that changes whenever the repo's files change."""
        h = hashlib.sha1()
        for path, data in sorted(self.repos[repo_id].items()):
            h.update(path.encode() + b"\0" + hashlib.sha256(data).digest())
        return h.hexdigest()

    # ---- routing ------------------------------------------------------------------------------
    def route(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        """Register ``handler(request, match) -> Response`` for requests whose path matches ``pattern``."""

        def register(handler: Handler) -> Handler:
            self.routes.append((method, re.compile(pattern), handler))
            return handler

        return register

    def dispatch(self, request: Request) -> Response:
        self.requests.append((request.method, request.path))
        for method, pattern, handler in self.routes:
            match = pattern.match(request.path)
            if method == request.method and match:
                return handler(request, match)
        return Response.error(404, "NotFound", f"fake hub has no route for {request.method} {request.path}")

    def _resolve(self, request: Request, m: re.Match) -> Response:
        repo_id, revision, filename = m["repo_id"], m["revision"], m["filename"]
        if repo_id not in self.repos:
            return Response.error(404, "RepoNotFound", f"Repository Not Found for {repo_id}")
        commit = self.commit_of(repo_id) if revision == "main" else self.tags.get((repo_id, revision), revision)
        files = self.snapshots[repo_id].get(commit)
        if files is None:
            return Response.error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        if filename not in files:
            return Response.error(404, "EntryNotFound", f"{filename} does not exist", {"X-Repo-Commit": commit})
        data = files[filename]
        return Response(200, data, {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                                    "Content-Type": "application/octet-stream"})

    def _create_repo(self, request: Request, m: re.Match) -> Response:
        body = request.json()
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
        if repo_id in self.repos:  # like the Hub, a 409 still carries the url (create_repo(exist_ok=True) reads it)
            message = f"You already created this model repo: {repo_id}"
            return Response.json({"error": message, "url": f"{self.url}/{repo_id}"}, 409, {"X-Error-Message": message})
        self.add_repo(repo_id)
        self.private[repo_id] = body.get("visibility", "private" if body.get("private") else "public") != "public"
        return Response.json({"url": f"{self.url}/{repo_id}", "name": repo_id})

    def _preupload(self, request: Request, m: re.Match) -> Response:
        """Every file is a "regular" (inline, base64) upload: no LFS or Xet storage to fake."""
        if m["repo_id"] not in self.repos:
            return Response.error(404, "RepoNotFound", f"Repository Not Found for {m['repo_id']}")
        files = request.json()["files"]
        return Response.json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})

    def _commit(self, request: Request, m: re.Match) -> Response:
        """Apply an NDJSON commit (header, then file / deletedFile lines) to the repo's main revision."""
        repo_id = m["repo_id"]
        if repo_id not in self.repos:
            return Response.error(404, "RepoNotFound", f"Repository Not Found for {repo_id}")
        for line in request.body.splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                self.repos[repo_id][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            elif item["key"] == "deletedFile":
                self.repos[repo_id].pop(item["value"]["path"], None)
            elif item["key"] != "header":
                return Response.error(400, "BadRequest", f"fake hub cannot apply {item['key']!r} operations")
        self._remember(repo_id)
        commit = self.commit_of(repo_id)
        return Response.json({"commitUrl": f"{self.url}/{repo_id}/commit/{commit}", "commitOid": commit})

    def _validate_yaml(self, request: Request, m: re.Match) -> Response:
        """The Hub checks a model card's YAML front matter before a commit that includes README.md."""
        import yaml

        parts = request.json()["content"].split("---\n")
        try:
            metadata = yaml.safe_load(parts[1]) if len(parts) >= 3 and parts[0] == "" else None
        except yaml.YAMLError as err:
            metadata = f"invalid YAML: {err}"
        if not isinstance(metadata, dict):
            return Response.json({"errors": [{"message": f"README.md front matter is not a YAML mapping: {metadata!r}"}]}, 400)
        return Response.json({"warnings": []})

    # ---- server -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "start() the hub first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeHub":
        hub = self

        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                request = Request(self.command, unquote(parts.path), parts.query, dict(self.headers.items()),
                                  self.rfile.read(length) if length else b"")
                response = hub.dispatch(request)
                self.send_response(response.status)
                for key, value in (response.headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(response.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(response.body)

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _handle

            def log_message(self, *args) -> None:  # keep test output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), RequestHandler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None


def unused_local_url() -> str:
    """An http URL on localhost where nothing listens (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def point_hub_client_at(monkeypatch: pytest.MonkeyPatch, endpoint: str, home: Path) -> None:
    """Send huggingface_hub to ``endpoint`` with its cache (and no token) under ``home``."""
    from huggingface_hub import constants

    endpoint = endpoint.rstrip("/")
    cache = home / "hub"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    # huggingface_hub reads these once at import time
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    # hf_hub_download retries a refused connection 5 times with 1+2+4+8+8 s of backoff: skip the waiting
    from huggingface_hub.utils import _http

    monkeypatch.setattr(_http, "time", SimpleNamespace(**{**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")},
                                                          "sleep": lambda seconds: None}))


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """A running FakeHub with huggingface_hub pointed at it and its cache in ``tmp_path/hf_home``."""
    hub = FakeHub().start()
    point_hub_client_at(monkeypatch, hub.url, tmp_path / "hf_home")
    yield hub
    hub.stop()
