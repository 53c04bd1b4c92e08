"""One name per provider: the alias table every surface (SDK, usage reader, pricing, ingest) applies."""

from __future__ import annotations

# Keys are lower-case; any name not listed is kept, lower-cased. Values are genai-prices provider ids.
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
    """The one name of a provider ('Claude' -> 'anthropic', 'xai' -> 'x-ai'); None when blank or not text."""
    if not isinstance(provider, str):
        return None
    name = provider.strip().lower()
    return PROVIDER_ALIASES.get(name, name) or None
