"""LiteLLM SDK integration: every completion LiteLLM makes in this process is journaled by llmcost.

    import litellm
    from llmcost.integrations.litellm import LLMCostLogger

    litellm.callbacks = [LLMCostLogger()]
    litellm.completion(model="gpt-4o", messages=[...],
                       metadata={"spend_logs_metadata": {"user_id": uid, "tenant_id": tid, "use_case": "chat_tutor"}})

LiteLLM is imported only when `LLMCostLogger` is first used, so llmcost does not depend on it. Usage is
read from LiteLLM's StandardLoggingPayload and re-priced by llmcost; LiteLLM's own cost stays in metadata.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from llmcost.collector.auth import OPEN_GRANT
from llmcost.collector.intake import check_records
from llmcost.collector.litellm import payload_to_record
from llmcost.sdk import fallback
from llmcost.sdk.tracker import Tracker

log = logging.getLogger("llmcost")


def record_payload(tracker: Tracker, payload: Any) -> int:
    """Journal the usage of one StandardLoggingPayload; returns how many records were accepted.

    A payload that does not make a valid event goes to the fallback log with its reason, so ingestion
    lists it in failed logs instead of it vanishing.
    """
    checked = check_records([payload_to_record(payload)], OPEN_GRANT, source="litellm")
    for record in checked.accepted:
        tracker.write(record)
    for rejected in checked.rejected:
        log.error("llmcost: LiteLLM payload not recorded as usage: %s", rejected["error"])
        kept = json.loads(json.dumps(payload, default=str))  # whatever LiteLLM put there, as text
        fallback.append(tracker.settings.fallback_log, {"litellm_payload": kept},
                        f"invalid LiteLLM payload: {rejected['error']}", fsync=tracker.settings.fsync)
    return len(checked.accepted)


def _build_logger_class():
    from litellm.integrations.custom_logger import CustomLogger

    class LLMCostLogger(CustomLogger):
        """A LiteLLM callback that journals each call's usage (success or failure) through a Tracker."""

        def __init__(self, tracker: Tracker | None = None, **kwargs: Any):
            super().__init__(**kwargs)
            self.tracker = tracker or Tracker(source="litellm")

        def _record(self, kwargs: dict[str, Any]) -> None:
            payload = kwargs.get("standard_logging_object")
            if payload is None:
                log.error("llmcost: LiteLLM gave no standard_logging_object; usage of this call not recorded "
                          "(upgrade LiteLLM to a version that builds StandardLoggingPayload)")
                return
            record_payload(self.tracker, payload)

        def log_success_event(self, kwargs, response_obj, start_time, end_time):
            self._record(kwargs)

        def log_failure_event(self, kwargs, response_obj, start_time, end_time):
            self._record(kwargs)

        async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
            self._record(kwargs)

        async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):
            self._record(kwargs)

    return LLMCostLogger


_logger_class = None


def __getattr__(name: str):
    global _logger_class
    if name == "LLMCostLogger":
        if _logger_class is None:
            _logger_class = _build_logger_class()
        return _logger_class
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
