"""The attack plug-ins by type name.

An attack module defines an `Attack` subclass with its own parameter dataclass and decorates it
with `@register_attack("name")`; nothing else needs to know it exists. `attacks.N.type` is checked
against what is registered here.
"""

from __future__ import annotations

from typing import Any

_ATTACKS: dict[str, Any] = {}


def register_attack(type_name: str):
    """Class decorator: make an `Attack` subclass available as `type: <type_name>` in configs."""

    def deco(cls: Any) -> Any:
        old = _ATTACKS.get(type_name)
        if old is not None and old.__qualname__ != cls.__qualname__:
            raise ValueError(f"attack type '{type_name}' is already registered by {old.__module__}.{old.__qualname__}")
        cls.type_name = type_name
        _ATTACKS[type_name] = cls
        return cls

    return deco


def unregister_attack(type_name: str) -> None:
    """Forget a registered type (a plug-in that is reloaded, or one registered only for a test)."""
    _ATTACKS.pop(type_name, None)


def attack_class(type_name: str) -> Any:
    """The registered class; KeyError for an unknown type (the config parser turns it into one line)."""
    return _ATTACKS[type_name]


def known_types() -> tuple[str, ...]:
    return tuple(sorted(_ATTACKS))
