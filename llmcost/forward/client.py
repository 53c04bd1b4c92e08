"""One collector, over one kept-alive HTTP connection: a batch of NDJSON lines in, the collector's answer out."""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from llmcost.errors import LLMCostError

USAGE_PATH = "/v1/usage"


class CollectorUnavailable(LLMCostError):
    """The collector did not acknowledge a batch (down, slow, refusing the key, or failing): send it again later."""


@dataclass
class Answer:
    status: int
    body: dict[str, Any] = field(default_factory=dict)
    text: str = ""


class CollectorClient:
    def __init__(self, url: str, key: str | None = None, timeout: float = 30.0):
        parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise LLMCostError(f"forward_to {url!r} is no collector URL: give one such as http://collector:8787")
        self.url = url
        self.parsed = parsed
        path = parsed.path.rstrip("/")
        self.path = path if path.endswith(USAGE_PATH) else path + USAGE_PATH
        self.key = key
        self.timeout = timeout
        self._connection: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            kind = http.client.HTTPSConnection if self.parsed.scheme == "https" else http.client.HTTPConnection
            self._connection = kind(self.parsed.hostname, self.parsed.port, timeout=self.timeout)
        return self._connection

    def post(self, lines: list[bytes]) -> Answer:
        """Post NDJSON lines; raises CollectorUnavailable when no answer came (nothing is known to be stored)."""
        body = b"\n".join(lines) + b"\n"
        headers = {"Content-Type": "application/x-ndjson", "Content-Length": str(len(body))}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        try:
            connection = self._connect()
            connection.request("POST", self.path, body=body, headers=headers)
            response = connection.getresponse()
            text = response.read().decode("utf-8", errors="replace")
        except (OSError, http.client.HTTPException, socket.timeout) as error:
            self.close()
            raise CollectorUnavailable(f"collector {self.url} did not answer: {type(error).__name__}: {error}") from None
        try:
            parsed = json.loads(text) if text.strip() else {}
        except ValueError:
            parsed = {}
        return Answer(response.status, parsed if isinstance(parsed, dict) else {}, text[:500])

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
