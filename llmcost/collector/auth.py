"""Service keys: `Authorization: Bearer <key>`, checked against SHA-256 hashes, never against stored keys.

Keys come from `LLMCOST_COLLECTOR_KEYS` (comma-separated) and/or a keys file (one per line, `#` comments),
each entry `sha256:<64 hex digits>` optionally followed by `@<tenant_id>`: a key tied to a tenant may only
send that tenant's records. Make an entry with `llmcost serve --hash-key` (reads the key on stdin).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from llmcost.errors import ConfigError

KEYS_ENV = "LLMCOST_COLLECTOR_KEYS"
_ENTRY = re.compile(r"^sha256:(?P<digest>[0-9a-fA-F]{64})(?:@(?P<tenant>.+))?$")


@dataclass(frozen=True)
class Grant:
    """What a request may do: `tenant_id` None means any tenant; `key` is the key's hash (for key budgets)."""

    tenant_id: str | None
    key: str | None = None


OPEN_GRANT = Grant(tenant_id=None)


class AuthError(Exception):
    """A request without a valid service key (401)."""


def hash_key(key: str) -> str:
    """The at-rest form of a service key."""
    return "sha256:" + hashlib.sha256(key.strip().encode()).hexdigest()


def _parse_entries(text: str, where: str) -> dict[str, Grant]:
    grants = {}
    for number, raw in enumerate(re.split(r"[,\n]", text), start=1):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        match = _ENTRY.match(entry)
        if match is None:
            raise ConfigError(
                f"{where}: entry {number} is not 'sha256:<64 hex digits>[@tenant_id]' "
                "(store the key's hash, made with `llmcost serve --hash-key`, never the key itself)"
            )
        tenant = (match["tenant"] or "").strip() or None
        grants[match["digest"].lower()] = Grant(tenant_id=tenant, key=f"sha256:{match['digest'].lower()}")
    return grants


@dataclass(frozen=True)
class ServiceKeys:
    """The configured key hashes; empty means the collector is open (allowed on loopback only)."""

    grants: dict[str, Grant]

    @classmethod
    def load(cls, keys_file: Path | None = None, environ: dict[str, str] | None = None) -> ServiceKeys:
        environ = os.environ if environ is None else environ
        grants = _parse_entries(environ.get(KEYS_ENV, ""), KEYS_ENV)
        if keys_file is not None:
            try:
                text = Path(keys_file).read_text()
            except OSError as error:
                raise ConfigError(f"cannot read the keys file {keys_file}: {error.strerror}") from None
            grants.update(_parse_entries(text, str(keys_file)))
        return cls(grants)

    @property
    def required(self) -> bool:
        return bool(self.grants)

    def check(self, authorization: str | None) -> Grant:
        """The grant of a request's `Authorization` header; raises AuthError when keys are required and it fails."""
        if not self.grants:
            return OPEN_GRANT
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise AuthError("missing service key: send 'Authorization: Bearer <key>'")
        grant = self.grants.get(hash_key(key).removeprefix("sha256:"))
        if grant is None:
            raise AuthError("unknown service key (check the key, or add its sha256 hash to the collector's keys)")
        return grant


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (binding them needs no service key)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
