"""The tracker's estimate of a call before it is made, and when an estimate counts as missed.

No tokenizer can be downloaded at run time here, so a prompt is ~4 characters a token: a deliberate,
documented approximation that the reservation settles against the provider's real figures.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

CHARS_PER_TOKEN = 4
DEFAULT_EXPECTED_OUTPUT_TOKENS = 256


def estimate_prompt_tokens(prompt: Any) -> int:
    """Approximate input tokens of a prompt: a string, chat messages, or content blocks (~4 characters a token)."""
    if prompt is None:
        return 0
    if isinstance(prompt, str):
        return math.ceil(len(prompt) / CHARS_PER_TOKEN)
    if isinstance(prompt, dict):
        per_message = 4  # role and separators
        return per_message + sum(estimate_prompt_tokens(v) for k, v in prompt.items() if k in ("content", "text", "parts"))
    if isinstance(prompt, (list, tuple)):
        return sum(estimate_prompt_tokens(item) for item in prompt)
    return math.ceil(len(str(prompt)) / CHARS_PER_TOKEN)


def estimate_missed(actual_over_estimate: Decimal, mismatch_ratio: Decimal) -> bool:
    """Whether actual tokens differ from the estimate by more than `estimate_mismatch_ratio` (the tracker's
    flag; `llmcost check` counts the same in SQL from the stored figures)."""
    return abs(actual_over_estimate - 1) > mismatch_ratio
