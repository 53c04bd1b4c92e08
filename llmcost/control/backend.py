"""The one factory of the control state: the SQLite file of this host, or Redis shared by every host."""

from __future__ import annotations

from llmcost.control.audit import audit_path_for


def open_control(settings, *, lazy: bool = False):
    """The control state every surface uses: the SQLite file (`control_db`) or Redis (`redis_url`), by
    `control_backend`. Every failure of either is a `ControlStateError`."""
    if settings.control_backend == "redis":
        from llmcost.control.redis_state import RedisControlState

        return RedisControlState(settings.redis_url, audit_path=audit_path_for(settings.control_db), lazy=lazy)
    from llmcost.control.state import ControlState

    return ControlState(settings.control_db, lazy=lazy)
