"""An attack entry of a config: the fields every attack has, plus the parameters of its type.

YAML keeps one flat mapping per attack (`{name: gcg_suffix, type: gcg, topk: 128}`); the keys that
are not common go to the parameter dataclass that the attack's plug-in declares, so a key that the
type does not read is refused instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

from hpcrobust.attacks.registry import attack_class, known_types
from hpcrobust.attacks.rounds import EvalRounds
from hpcrobust.errors import UserError
from hpcrobust.fields import build, field_row, setting, shown, to_data

PLACEMENTS = ("suffix", "prefix", "infix", "overwrite")


@dataclass
class AttackParams:
    """Base of every attack's own parameters (an attack without any uses it as is)."""


@dataclass
class TokenAttackParams(AttackParams):
    """Keys of the built-in token attacks. The defaults are the reference's: every iteration runs on every
    example (stopping early shrinks the compute axis and leaves training examples barely adversarial), and
    any token but the special ones may be used."""

    early_stop: bool = setting(False, doc="stop an example once its label flips (a speed option; the reference"
                               " runs every iteration)")
    ascii_only: bool = setting(False, doc="only tokens that decode to printable ASCII (the reference excludes only"
                               " special tokens)")


@dataclass
class AttackConfig:
    name: str = setting("gcg_suffix", doc="label in the results file")
    type: str = setting("gcg", doc="attack algorithm (its own keys follow below)")
    placement: str = setting("suffix", choices=PLACEMENTS, doc="where the attack tokens go")
    infix_fraction: float = setting(0.9, lo=0.0, hi=1.0, doc="infix: token fraction of the content before the"
                                    " attack")
    n_examples: int = setting(50, lo=1, hi=10**7, doc="validation examples attacked")
    n_iterations: int = setting(10, lo=1, hi=10**7, doc="propose-and-score steps per example")
    n_attack_tokens: int = setting(10, lo=1, hi=4096, doc="attack length (BEAST grows it one token per iteration, so it"
                                  " equals n_iterations)")
    rounds: EvalRounds = setting(EvalRounds(), doc="rounds this evaluation attack runs in: every round ('all'), a"
                                 " list such as [0, 2, 5] (entries after a run's last round are skipped), or 'log:K':"
                                 " K rounds spaced evenly in log(round + 1), always 0 and the run's last")
    params: AttackParams = field(default=None, metadata={"doc": "the type's own parameters"})  # type: ignore[assignment]

    # Common keys that a training attack takes from advtrain.* instead (see TrainAttackConfig).
    SCHEDULED: ClassVar[tuple[str, ...]] = ()
    SCHEDULE_HINT: ClassVar[dict[str, str]] = {}
    EVAL_ONLY: ClassVar[tuple[str, ...]] = ()  # common keys a training attack does not have

    def __post_init__(self) -> None:
        if self.params is None:
            self.params = attack_class(self.type).Params()

    @property
    def plugin(self):
        """The registered Attack subclass of this entry's type."""
        return attack_class(self.type)

    @property
    def ensemble(self) -> bool:
        return bool(getattr(self.params, "ensemble", False))

    # ---------------------------------------------------------------- parsing and plain form
    @classmethod
    def common_fields(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if f.name != "params" and f.name not in cls.EVAL_ONLY]

    @classmethod
    def scheduled(cls, plugin) -> tuple[str, ...]:
        """Keys that are not the user's to set for this role and type."""
        if not cls.SCHEDULED:
            return ()
        return cls.SCHEDULED + (("n_attack_tokens",) if plugin.length_is_iterations else ())

    @classmethod
    def from_data(cls, value: object, key: str) -> AttackConfig:
        if not isinstance(value, dict):
            raise UserError(f"{key}: expected a mapping, got {type(value).__name__}")
        kind = value.get("type", "gcg")
        if not isinstance(kind, str) or kind not in known_types():
            raise UserError(f"{key}.type: {shown(kind)} is not a known attack (known: {', '.join(known_types())})")
        plugin = attack_class(kind)
        for k in cls.EVAL_ONLY:
            if k in value:
                raise UserError(f"{key}.{k}: a training attack runs in every adversarial round; {k} is a key of"
                                f" evaluation attacks (attacks.N.{k})")
        for k in cls.scheduled(plugin):
            if k in value:
                raise UserError(f"{key}.{k}: a training attack's {k} is set by advtrain.* each round"
                                f" ({cls.SCHEDULE_HINT[k]}); remove it")
        common = {f.name for f in cls.common_fields()}
        own = {k: v for k, v in value.items() if k not in common}
        keys = ", ".join(f.name for f in dataclasses.fields(plugin.Params)) or "none"
        params = build(plugin.Params, own, key, unknown=f" (a {kind} attack's own keys: {keys})")
        return build(cls, {k: v for k, v in value.items() if k in common}, key)._with(params)

    def _with(self, params: AttackParams) -> AttackConfig:
        self.params = params
        return self

    def to_data(self) -> dict:
        skip = set(self.scheduled(self.plugin)) | set(self.EVAL_ONLY) | {"params"}
        out = {f.name: to_data(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in skip}
        out.update(to_data(self.params))
        return out

    @classmethod
    def describe_rows(cls, prefix: str, section: str) -> list[tuple[str, str, str]]:
        rows = []
        for f in cls.common_fields():
            if f.name in cls.SCHEDULED:
                continue
            key, default, doc = field_row(f, prefix + f.name)
            if f.name == "type":
                doc += f" [{'|'.join(known_types())}]"
            rows.append((key, default, doc))
        by_key: dict[str, list] = {}
        for kind in known_types():
            for f in dataclasses.fields(attack_class(kind).Params):
                by_key.setdefault(f.name, [f, []])[1].append(kind)
        for name, (f, kinds) in by_key.items():
            rows.append(field_row(f, prefix + name, note=f"{'/'.join(kinds)}: "))
        return rows


@dataclass
class TrainAttackConfig(AttackConfig):
    """The attack that adversarial training runs: its examples and iterations follow advtrain.*."""

    SCHEDULED = ("n_examples", "n_iterations")
    EVAL_ONLY = ("rounds",)
    SCHEDULE_HINT = {"n_examples": "advtrain.n_new_examples",
                     "n_iterations": "advtrain.iterations_start to advtrain.iterations_end",
                     "n_attack_tokens": "it grows one token per iteration"}

