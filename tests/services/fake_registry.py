"""A fake image registry, at a boundary prefect-bench does not own (the Docker Registry HTTP API
v2, spoken by the docker daemon): no registry is reachable here, so this one serves, on a free
loopback port, one image taken from the local daemon by `docker save`, as a registry would:
its manifest (schema 2) by tag, its config and its layers (gzip-compressed) by digest. The
daemon pulls from 127.0.0.0/8 over plain HTTP without being told to (an insecure registry by
default). Read-only: pushes are refused.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def _digest(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def image_blobs(client: Any, image: str) -> tuple[bytes, dict[str, bytes]]:
    """`image` of the local daemon as a registry holds it: its manifest and its blobs by
    digest (read from `docker save`'s manifest.json, which every daemon version writes)."""
    saved = io.BytesIO(b"".join(client.images.get(image).save()))
    with tarfile.open(fileobj=saved) as archive:

        def read(name: str) -> bytes:
            member = archive.extractfile(name)
            assert member is not None, name
            return member.read()

        (entry,) = json.loads(read("manifest.json"))
        config = read(entry["Config"])
        layers = [gzip.compress(read(name), compresslevel=1) for name in entry["Layers"]]
    blobs = {_digest(blob): blob for blob in [config, *layers]}
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "size": len(config), "digest": _digest(config)},
        "layers": [
            {"mediaType": LAYER_TYPE, "size": len(layer), "digest": _digest(layer)}
            for layer in layers
        ],
    }
    return json.dumps(manifest).encode(), blobs


class _Registry(http.server.BaseHTTPRequestHandler):
    manifest: ClassVar[bytes] = b""
    blobs: ClassVar[dict[str, bytes]] = {}

    def _answer(self, body: bool) -> None:
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts == ["v2"]:
            blob, kind = b"{}", "application/json"
        elif len(parts) > 3 and parts[-2] == "manifests":
            blob, kind = self.manifest, MANIFEST_TYPE
        elif len(parts) > 3 and parts[-2] == "blobs" and parts[-1] in self.blobs:
            blob, kind = self.blobs[parts[-1]], "application/octet-stream"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(blob)))
        self.send_header("Docker-Content-Digest", _digest(blob))
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        self.end_headers()
        if body:
            self.wfile.write(blob)

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serving(client: Any, image: str) -> Iterator[int]:
    """A registry on a free port of 127.0.0.1 holding the local `image` under every name and
    tag; its port."""
    manifest, blobs = image_blobs(client, image)
    handler = type("Registry", (_Registry,), {"manifest": manifest, "blobs": blobs})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
