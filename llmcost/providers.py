"""One name per provider: the alias table every surface (SDK, usage reader, pricing, ingest) applies."""

from __future__ import annotations

import functools

# Keys are lower-case; values are genai-prices provider ids.
PROVIDER_ALIASES = {
    "claude": "anthropic",
    "anthropic-ai": "anthropic",
    "xai": "x-ai",
    "x.ai": "x-ai",
    "grok": "x-ai",
    "gemini": "google",
    "google-genai": "google",
    "google-gla": "google",
    "vertex": "google",
    "vertex-ai": "google",
    "vertex_ai": "google",
    "vertexai": "google",
    "google-vertex": "google",
    "azure-openai": "azure",
    "azure_openai": "azure",
}


def canonical_provider(provider: str | None) -> str | None:
    """The provider's one name ('Claude' -> 'anthropic', 'xai' -> 'x-ai'), lower-cased, for price lookups;
    None when blank or not text."""
    if not isinstance(provider, str):
        return None
    name = provider.strip().lower()
    return PROVIDER_ALIASES.get(name, name) or None


@functools.cache
def known_providers() -> frozenset[str]:
    """The providers the price table names, under their one name."""
    from genai_prices import data_snapshot

    return frozenset(p.id for p in data_snapshot.get_snapshot().providers) | frozenset(PROVIDER_ALIASES.values())


def stored_provider(provider: str | None) -> str | None:
    """The name an event stores: a known provider or alias under its one name, any other name as given."""
    canonical = canonical_provider(provider)
    return canonical if canonical in known_providers() or (isinstance(provider, str) and
                                                           provider.strip().lower() in PROVIDER_ALIASES) else provider
