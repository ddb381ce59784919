"""Attacks: one scoring engine, a lockstep driver, and the algorithms as plug-ins.

An attack is one file: an `Attack` subclass with its own parameter dataclass (`Params`), decorated
with `@register_attack("name")`. Importing this package registers the built-in ones below; an attack
defined elsewhere registers itself the same way once its module is imported.
"""

from hpcrobust.attacks import beast, gcg, random_token  # noqa: F401  (register the built-in attacks)
from hpcrobust.attacks.registry import attack_class, known_types, register_attack

__all__ = ["attack_class", "known_types", "register_attack"]
