"""A real HTTP server speaking the part of the Hugging Face hub API that `huggingface_hub` uses to list a
dataset repository and download one file (`list_repo_files`, `hf_hub_download`, `repo_info`).

It runs in a thread of the test, serves files from memory and records every request, so a test can
say what went over the wire (or that nothing did). `truncate_next_download` makes the next file
download stop after half its bytes and the server refuse connections after that: an interrupted
transfer, seen by the real client.

The routes (huggingface_hub 1.x/2.x):
- GET  /api/datasets/<owner>/<name>                          repo_info / dataset_info
- GET  /api/datasets/<owner>/<name>/tree/<revision>[/<path>]  list_repo_files (list_repo_tree)
- HEAD /datasets/<owner>/<name>/resolve/<revision>/<file>      hf_hub_download's metadata request
- GET  /datasets/<owner>/<name>/resolve/<revision>/<file>      hf_hub_download's transfer
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

COMMIT = hashlib.sha1(b"fake hub commit").hexdigest()


class FakeHub:
    """`repos`: {repo_id: {file name: bytes}}; `url` is the endpoint to give HF_ENDPOINT."""

    def __init__(self, repos: dict[str, dict[str, bytes]]) -> None:
        self.repos = repos
        self.requests: list[tuple[str, str]] = []
        self.truncate_next = False
        self.refusing = False
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def truncate_next_download(self) -> None:
        """The next GET of a file sends half its bytes and closes; every request after that is refused."""
        self.truncate_next = True

    def _route(self, path: str) -> tuple[str, str, str] | None:
        """(kind, repo_id, rest) of a request path, kind in {info, tree, resolve}; None when unknown."""
        for prefix in ("/api/datasets/", "/datasets/"):
            for repo_id in self.repos if path.startswith(prefix) else ():
                tail = path[len(prefix) :]
                if tail != repo_id and not tail.startswith(repo_id + "/"):
                    continue
                rest = tail[len(repo_id) :].lstrip("/")
                if prefix == "/datasets/":
                    resolve = rest.startswith("resolve/")
                    return ("resolve", repo_id, rest.removeprefix("resolve/")) if resolve else None
                return ("tree" if rest.startswith("tree/") else "info"), repo_id, rest
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _json(self, value: object) -> None:
                data = json.dumps(value).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _not_found(self) -> None:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _serve(self, body: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                hub.requests.append((self.command, path))
                if hub.refusing:
                    self.close_connection = True
                    self.connection.close()
                    return
                route = hub._route(path)
                if route is None:
                    self._not_found()
                    return
                kind, repo_id, rest = route
                files = hub.repos[repo_id]
                if kind == "info":
                    siblings = [{"rfilename": name} for name in files]
                    self._json({"id": repo_id, "sha": COMMIT, "private": False, "siblings": siblings})
                elif kind == "tree":
                    tree = [
                        {"type": "file", "oid": hashlib.sha1(b).hexdigest(), "size": len(b), "path": name}
                        for name, b in files.items()
                    ]
                    self._json(tree)
                else:
                    self._file(files, rest.partition("/")[2], body)

            def _file(self, files: dict[str, bytes], name: str, body: bool) -> None:
                if name not in files:
                    self._not_found()
                    return
                data = files[name]
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not body:
                    return
                if hub.truncate_next:
                    hub.truncate_next, hub.refusing = False, True
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data)

        return Handler
