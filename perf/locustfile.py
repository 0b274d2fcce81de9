"""The OpenStack control-plane mix as Locust users (issue 7), run by `make locust`.

What a proxy node of a cloud carries in front of the API services, in rough proportions
of a busy control plane:

- keystone: token requests, `POST /v3/auth/tokens` with a JSON password body (every CLI
  call and every service starts with one);
- nova `GET /v2.1/servers/detail`, neutron `GET /v2.0/networks`, glance `GET /v2/images`:
  the list calls dashboards and agents poll;
- glance image upload: `PUT /v2/images/ID/file`, a few MB streamed as a chunked body (what
  glanceclient sends), the long request that must not stall the short ones.

The targets are `pylb demo` backends (pylb/demo.py), which answer every method and path
with `{"server": ..., "path": ...}` after reading the whole request body; each task checks
that the answer names the path it asked for, so a response that went to the wrong request
counts as a failure. Run headless and bounded: `perf/locust_run.py` (what `make locust`
calls) starts the demo, runs this file for `-t` (30 s by default) and exits non-zero on any
failure. Against another service: `locust -f perf/locustfile.py --headless -t 30s --host URL`.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator

from locust import HttpUser, between, task

UPLOAD_BYTES = int(os.environ.get("PYLB_LOCUST_UPLOAD_MB", "4")) * 1024 * 1024
UPLOAD_PIECE = 64 * 1024

TOKEN_BODY = json.dumps(
    {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {"name": "admin", "domain": {"id": "default"}, "password": "x"}
                },
            },
            "scope": {"project": {"name": "admin", "domain": {"id": "default"}}},
        }
    }
)


def image_chunks(total: int = UPLOAD_BYTES, piece: int = UPLOAD_PIECE) -> Iterator[bytes]:
    """A generated image body, yielded piece by piece so requests streams it chunked
    (as glanceclient does) instead of holding it whole."""
    block = bytes(range(256)) * (piece // 256)
    sent = 0
    while sent < total:
        n = min(piece, total - sent)
        yield block[:n]
        sent += n


class OpenStackUser(HttpUser):
    """One API client of the control plane."""

    wait_time = between(0.01, 0.1)

    def _check(self, method: str, path: str, name: str, **kw) -> None:
        with self.client.request(method, path, name=name, catch_response=True, **kw) as resp:
            if resp.status_code == 0:  # no response at all (refused, reset, timeout)
                resp.failure(f"no response: {resp.error}")
                return
            if resp.status_code >= 400:
                resp.failure(f"status {resp.status_code}")
                return
            try:
                got = resp.json().get("path")
            except ValueError:
                resp.failure("not JSON")
                return
            if got != path:
                resp.failure(f"answer for {got!r}, asked {path!r}")
            else:
                resp.success()

    @task(4)
    def keystone_token(self) -> None:
        self._check(
            "POST",
            "/v3/auth/tokens",
            "keystone POST /v3/auth/tokens",
            data=TOKEN_BODY,
            headers={"Content-Type": "application/json"},
        )

    @task(4)
    def nova_servers(self) -> None:
        self._check("GET", "/v2.1/servers/detail", "nova GET /v2.1/servers/detail")

    @task(3)
    def neutron_networks(self) -> None:
        self._check("GET", "/v2.0/networks", "neutron GET /v2.0/networks")

    @task(3)
    def glance_images(self) -> None:
        self._check("GET", "/v2/images", "glance GET /v2/images")

    @task(1)
    def glance_upload(self) -> None:
        path = f"/v2/images/{uuid.uuid4()}/file"
        self._check(
            "PUT",
            path,
            "glance PUT /v2/images/ID/file",
            data=image_chunks(),
            headers={"Content-Type": "application/octet-stream"},
        )
