"""Who may see and do what on the dashboard: the one rule, from the identity's claims and `[dashboard]`.

- `operator`: every page, plus the actions that change things (Refresh, Replay, dismissing failed logs,
  kill switches, resume).
- `viewer`: every page, read only.
- a tenant-scoped viewer: read only, and every figure, table and CSV limited to their tenants (the scope is
  part of the queries' filters, so no widget or URL can widen it). A tenant scope always makes a viewer:
  the operator actions act on every tenant at once.
Without sign-in the dashboard is in local mode: on a loopback address it works as an operator's own tool;
on any other address it refuses unless `allow_anonymous` is set, and then it is read only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llmcost.config import DashboardSettings

OPERATOR = "operator"
VIEWER = "viewer"
LOCAL_ACTOR = "dashboard"  # who acts in local mode, as the audit log has always named the dashboard


@dataclass(frozen=True)
class Access:
    role: str
    who: str  # the signed-in email (or subject), or LOCAL_ACTOR / "anonymous"
    tenants: tuple[str, ...] | None = None  # None: every tenant
    signed_in: bool = False

    @property
    def can_operate(self) -> bool:
        return self.role == OPERATOR and self.tenants is None

    @property
    def sees_every_tenant(self) -> bool:
        return self.tenants is None

    def describe(self) -> str:
        if self.tenants is not None:
            return f"viewer of {', '.join(self.tenants)}"
        return self.role


def _values(claims: Mapping[str, Any], name: str | None) -> set[str]:
    """A claim's values as text: a claim may hold one value or a list."""
    value = claims.get(name) if name else None
    if value is None or value == "":
        return set()
    items = value if isinstance(value, (list, tuple, set)) else [value]
    return {str(item).strip() for item in items if str(item).strip()}


def _email(claims: Mapping[str, Any]) -> str | None:
    """The identity's email, unless the provider says it is not verified (then no email or domain rule applies)."""
    email = claims.get("email")
    if not isinstance(email, str) or "@" not in email:
        return None
    if str(claims.get("email_verified", True)).lower() == "false":
        return None
    return email.strip().lower()


def _matches(entry: str, email: str | None, groups: set[str]) -> bool:
    if entry.startswith("group:"):
        return entry.removeprefix("group:") in groups
    if email is None:
        return False
    entry = entry.lower()
    return email.endswith(entry) if entry.startswith("@") else email == entry


def decide_access(claims: Mapping[str, Any], rules: DashboardSettings) -> Access | None:
    """The role and tenant scope of a signed-in identity, or None when `[dashboard]` gives it no access."""
    email = _email(claims)
    groups = _values(claims, rules.groups_claim)
    who = email or str(claims.get("email") or claims.get("sub") or "unknown")

    def named(entries) -> bool:
        return any(_matches(entry, email, groups) for entry in entries)

    tenants = _values(claims, rules.tenant_claim)
    for entry, names in rules.tenants.items():
        if _matches(entry, email, groups):
            tenants.update(names)
    if tenants:
        return Access(VIEWER, who, tuple(sorted(tenants)), signed_in=True)
    if named(rules.roles.operator):
        return Access(OPERATOR, who, signed_in=True)
    if named(rules.roles.viewer):
        return Access(VIEWER, who, signed_in=True)
    return None


def is_loopback(address: str | None) -> bool:
    """Whether the server listens on this machine only (no address: Streamlit listens on every interface)."""
    if not address:
        return False
    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to any interface


def without_sign_in(address: str | None, rules: DashboardSettings) -> Access | None:
    """Access when no sign-in is configured: local mode on loopback, read only with allow_anonymous, else none."""
    if is_loopback(address):
        return Access(OPERATOR, LOCAL_ACTOR)
    if rules.allow_anonymous:
        return Access(VIEWER, "anonymous")
    return None
