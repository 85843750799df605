"""A small Hugging Face Hub on 127.0.0.1 for tests: the routes huggingface_hub and datasets call, for repositories
the test fills with files. Point HF_ENDPOINT at `server.url` and the real client code runs against it.

Routes (found by running the clients against this server with every request logged, `server.requests`):

    GET  /api/{models|datasets}/{repo}[/revision/{rev}]      repository info: sha, siblings
    GET  /api/{models|datasets}/{repo}/tree/{rev}[/{path}]   file listing (recursive or not)
    POST /api/{models|datasets}/{repo}/paths-info/{rev}      info of given paths
    HEAD|GET /[datasets/]{repo}/resolve/{rev}/{file}         a file, with X-Repo-Commit, ETag, Content-Length

A repository has branches (name -> commit) and commits (sha -> {path: bytes}); `move_branch` makes a new
commit. A repository may require a token (401 without the right one) or be gated (403 GatedRepo). Errors carry
the X-Error-Code headers the hub sends (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class Repo:
    kind: str  # "model" or "dataset"
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    token: str | None = None  # required bearer token
    gated: bool = False


class Hub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[str] = []  # "METHOD path" of every request, in order
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Hub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add(self, repo_id: str, files: dict[str, bytes], kind: str = "model", **options) -> str:
        """A repository with one commit on `main`; returns the commit sha."""
        self.repos[f"{kind}s/{repo_id}"] = Repo(kind, **options)
        return self.move_branch(repo_id, files, kind=kind)

    def move_branch(
        self, repo_id: str, files: dict[str, bytes], branch: str = "main", kind: str = "model"
    ) -> str:
        """A new commit holding `files`, `branch` moved to it; returns its sha."""
        repo = self.repos[f"{kind}s/{repo_id}"]
        parent = repo.branches.get(branch, "")
        sha = hashlib.sha1(
            (
                parent + json.dumps({k: hashlib.sha256(v).hexdigest() for k, v in sorted(files.items())})
            ).encode()
        ).hexdigest()
        repo.commits[sha] = dict(files)
        repo.branches[branch] = sha
        return sha


def _blob_sha(data: bytes) -> str:  # what the hub's ETag of a plain (non-LFS) file is: the git blob id
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _handler(hub: Hub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet; requests are recorded in hub.requests
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self._form = self.rfile.read(length).decode() if length else ""
            self._serve(body=True)

        # ---------------------------------------------------------------- routing

        def _serve(self, body: bool) -> None:
            hub.requests.append(f"{self.command} {self.path}")
            path = unquote(urlsplit(self.path).path)
            api = re.match(
                r"^/api/(models|datasets)/([^/]+/[^/]+)(?:/(revision|tree|paths-info)/([^/]+)(/.*)?)?$", path
            )
            resolve = re.match(r"^/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
            if api:
                plural, repo_id, action, revision, rest = api.groups()
                self._api(plural, repo_id, action, revision or "main", (rest or "").lstrip("/"), body)
            elif resolve:
                plural = "datasets" if resolve[1] else "models"
                self._resolve(plural, resolve[2], resolve[3], resolve[4], body)
            else:
                self._error(404, "", "no such route", body)

        def _repo(self, plural: str, repo_id: str, revision: str, body: bool) -> tuple[Repo, str] | None:
            repo = hub.repos.get(f"{plural}/{repo_id}")
            if repo is None:
                self._error(404, "RepoNotFound", f"Repository Not Found for url: {self.path}", body)
                return None
            sent = self.headers.get("Authorization", "")
            if repo.token and sent != f"Bearer {repo.token}":
                if sent:
                    self._error(401, "", "Invalid credentials in Authorization header", body)
                else:
                    self._error(401, "RepoNotFound", f"Repository Not Found for url: {self.path}", body)
                return None
            if repo.gated and not sent:
                self._error(403, "GatedRepo", f"Access to repository {repo_id} is restricted", body)
                return None
            sha = repo.branches.get(revision, revision if revision in repo.commits else None)
            if sha is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", body)
                return None
            return repo, sha

        def _api(self, plural, repo_id, action, revision, rest, body) -> None:
            found = self._repo(plural, repo_id, revision, body)
            if found is None:
                return
            repo, sha = found
            files = repo.commits[sha]
            if action in (None, "revision"):
                info = {
                    "id": repo_id,
                    "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
                    "sha": sha,
                    "private": bool(repo.token),
                    "gated": repo.gated,
                    "disabled": False,
                    "tags": [],
                    "siblings": [{"rfilename": name} for name in sorted(files)],
                    "lastModified": "2026-11-29T00:00:00.000Z",
                }
                if repo.kind == "model":
                    info["modelId"] = repo_id
                self._json(info, body)
            elif action == "tree":
                recursive = parse_qs(urlsplit(self.path).query).get("recursive", ["false"])[0] in (
                    "true",
                    "True",
                    "1",
                )
                self._json(_tree(files, rest, recursive), body)
            else:  # paths-info
                form = parse_qs(getattr(self, "_form", ""))
                wanted = form.get("paths", [])
                entries = [e for e in _tree(files, "", True) if e["path"] in wanted]
                self._json(entries, body)

        def _resolve(self, plural, repo_id, revision, name, body) -> None:
            found = self._repo(plural, repo_id, revision, body)
            if found is None:
                return
            repo, sha = found
            data = repo.commits[sha].get(name)
            if data is None:
                self._error(404, "EntryNotFound", f"{name} does not exist at {revision}", body, commit=sha)
                return
            self.send_response(200)
            self.send_header("X-Repo-Commit", sha)
            self.send_header("ETag", f'"{_blob_sha(data)}"')
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if body:
                self.wfile.write(data)

        # ---------------------------------------------------------------- answers

        def _json(self, data, body: bool) -> None:
            payload = json.dumps(data).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if body:
                self.wfile.write(payload)

        def _error(self, status: int, code: str, message: str, body: bool, commit: str | None = None) -> None:
            payload = json.dumps({"error": message}).encode()
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            if commit:
                self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if body:
                self.wfile.write(payload)

    return Handler


def _tree(files: dict[str, bytes], folder: str, recursive: bool) -> list[dict]:
    """The entries under `folder`: files (path, size, oid) and, when not recursive, the folders one level down."""
    prefix = folder.rstrip("/") + "/" if folder else ""
    entries, folders = [], set()
    for name, data in sorted(files.items()):
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix) :]
        if "/" in rest and not recursive:
            folders.add(prefix + rest.split("/")[0])
            continue
        if recursive:
            parts = name.split("/")[:-1]
            folders.update(
                "/".join(parts[: i + 1])
                for i in range(len(parts))
                if "/".join(parts[: i + 1]).startswith(prefix)
            )
        entries.append({"type": "file", "path": name, "size": len(data), "oid": _blob_sha(data)})
    return [
        {"type": "directory", "path": f, "oid": hashlib.sha1(f.encode()).hexdigest()} for f in sorted(folders)
    ] + entries
