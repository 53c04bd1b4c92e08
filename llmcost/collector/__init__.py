"""`llmcost serve`: the HTTP collector for usage from any host and language (see README, "Send usage from any language")."""

from llmcost.collector.app import create_app

__all__ = ["create_app"]
