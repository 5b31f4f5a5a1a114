"""One small generic registry of named variants, one instance per slot.

Feels like timm: a name is the whole user interface of a variant.

    @FILTERS.register("paper", "conv -> attentions -> MHSA -> upsample")
    class PaperFilter(nn.Module): ...

    build("filter", "paper", in_channels=1792, out_channels=320)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ablate.core.errors import AblateError
from ablate.plugins import get, load_all, loading


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., Any]
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)
    plugin: str | None = None  # key of the plugin whose import registered it (None: ablate's)

    @property
    def origin(self) -> str:
        """`built-in`, or the plugin that registered this variant (its entry point name)."""
        found = get(self.plugin) if self.plugin else None
        return "built-in" if self.plugin is None else (found.name if found else self.plugin)

    def arguments(self) -> dict[str, Any]:
        """Keyword arguments of the factory with their defaults (preset defaults win)."""
        params = inspect.signature(self.factory).parameters
        args = {
            k: (p.default if p.default is not inspect.Parameter.empty else "<required>")
            for k, p in params.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and k != "self"
        }
        args.update(self.defaults)
        return args

    @property
    def takes_any_key(self) -> bool:
        """Whether the factory takes **kwargs (then any recipe key of its slot is its own)."""
        return any(p.kind is p.VAR_KEYWORD
                   for p in inspect.signature(self.factory).parameters.values())


class Registry:
    """Maps a variant name to a factory, with a description and preset defaults."""

    def __init__(self, slot: str) -> None:
        self.slot = slot
        self._entries: dict[str, Entry] = {}
        self.notes: dict[str, str] = {}  # argument -> what its values mean (`ablate list`)

    def register(
        self, name: str, description: str, **defaults: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator registering `factory` under `name`; `defaults` preset its arguments."""

        def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries:
                raise ValueError(f"{self.slot} variant {name!r} is registered twice")

            self._entries[name] = Entry(name, factory, description, dict(defaults),
                                        loading(factory))
            return factory

        return decorator

    def get(self, name: str) -> Entry:
        if name not in self._entries:
            valid = ", ".join(sorted(self._entries))
            raise AblateError(f"unknown {self.slot} {name!r}; valid {self.slot} variants: {valid}")
        return self._entries[name]

    def build(self, name: str, **kwargs: Any) -> Any:
        entry = self.get(name)
        merged = {**entry.defaults, **kwargs}
        accepted = entry.arguments()
        unknown = sorted(set(merged) - set(accepted)) if not entry.takes_any_key else []
        if unknown:
            raise AblateError(
                f"{self.slot} {name!r} has no argument(s) {', '.join(unknown)}; "
                f"it takes: {', '.join(sorted(accepted)) or 'nothing'}"
            )
        return entry.factory(**merged)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: str) -> bool:
        return name in self._entries


BACKBONES = Registry("backbone")
FILTERS = Registry("filter")
WEIGHTS = Registry("weight")
GUIDES = Registry("guide")
TEACHERS = Registry("teacher")

SLOTS: dict[str, Registry] = {
    r.slot: r for r in (BACKBONES, FILTERS, WEIGHTS, GUIDES, TEACHERS)
}


def registry(slot: str) -> Registry:
    """The registry of one slot; fails with the list of slots for an unknown one."""
    _load_variants()
    if slot not in SLOTS:
        raise AblateError(f"unknown slot {slot!r}; valid slots: {', '.join(SLOTS)}")
    return SLOTS[slot]


def build(slot: str, name: str, **kwargs: Any) -> Any:
    """Build variant `name` of `slot` with keyword arguments (timm's create_model)."""
    return registry(slot).build(name, **kwargs)


def _load_variants() -> None:
    """Import the modules whose decorators fill the registries: ablate's own, then plugins
    (entry points `ablate.variants`, $ABLATE_PLUGINS)."""
    # lazy: that module imports this one
    import ablate.model  # noqa: F401  (registers every model variant)

    load_all()
