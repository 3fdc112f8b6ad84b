"""The configured model entries, one provider each, by name.

Contract: :class:`Models` builds one provider per ``[models.NAME]`` entry (the ``gemini``
entry from ``[gemini]`` included): :class:`GeminiProvider` for ``provider = "gemini"``,
:class:`OpenAIProvider` for ``provider = "openai"``. ``default`` names the entry new
conversations use; :meth:`Models.get` gives an entry's provider; :meth:`Models.aclose`
closes every connection pool. A provider given to the constructor stands in for the
default entry's (tests, embedding).
"""

from __future__ import annotations

from ._config import Config, ModelConfig, gemini_for
from ._gemini import GeminiProvider, setup_notice
from ._openai import OpenAIProvider
from ._provider import Provider


def build_provider(entry: ModelConfig, config: Config) -> Provider:
    """The provider of one entry."""
    if entry.provider == "gemini":
        return GeminiProvider(gemini_for(entry, config.gemini))
    return OpenAIProvider(entry)


class Models:
    """Every configured model, by entry name."""

    def __init__(self, config: Config, *, provider: Provider | None = None) -> None:
        self.entries = config.models
        self.default = config.default_model
        self._providers: dict[str, Provider] = {}
        for entry in self.entries:
            if provider is not None and entry.name == self.default:
                self._providers[entry.name] = provider
            else:
                self._providers[entry.name] = build_provider(entry, config)
        if not self.entries and provider is not None:
            self._providers[self.default] = provider
        default_entry = config.model(self.default)
        notice = None
        if default_entry is not None and default_entry.provider == "gemini":
            notice = setup_notice(gemini_for(default_entry, config.gemini))
        self.notices: tuple[str, ...] = () if notice is None else (notice,)

    def get(self, name: str) -> Provider | None:
        """The provider of entry ``name``, if it is configured."""
        return self._providers.get(name)

    def entry(self, name: str) -> ModelConfig | None:
        """Entry ``name``'s settings, if it is configured."""
        return next((e for e in self.entries if e.name == name), None)

    @property
    def names(self) -> list[str]:
        """Every entry's name, in the configuration's order."""
        return list(self._providers)

    def name_of(self, provider: Provider) -> str:
        """The entry ``provider`` serves ("" when it is none of them)."""
        return next((n for n, p in self._providers.items() if p is provider), "")

    async def aclose(self) -> None:
        """Close every provider's connection pool."""
        for provider in self._providers.values():
            closer = getattr(provider, "aclose", None)
            if closer is not None:
                await closer()
