"""Rules: the range and choice constraints of config values.

A knob's rule sits on its declaration, as ``typing.Annotated`` metadata of a schema field
(``padding: Annotated[int, Integer(0)] = 4``); :mod:`cnnstress.schema` checks every field of a
composed config against it. A wrong value is always one :class:`~cnnstress.core.errors.ConfigError`
line, ``<key> must be <rule>, got <value>``, the key being where the value sits in the config.

Written here rather than taken from a validation library: the rules are a handful of range
checks whose messages must name cnnstress's dotted config keys; Hydra's structured configs
check types only, with multi-line errors.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from cnnstress.core.errors import ConfigError


class Rule:
    """A constraint on one value: :meth:`convert` returns the value, converted, or raises
    ``ValueError``; :meth:`describe` says what is allowed (completes "<key> must be ...")."""

    optional: bool = False

    def convert(self, value: Any) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def __call__(self, value: Any) -> Any:
        if value is None and self.optional:
            return None
        return self.convert(value)

    def _or_null(self, text: str) -> str:
        return f"{text} or null" if self.optional else text


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError
    return float(value)


@dataclasses.dataclass(frozen=True)
class Integer(Rule):
    """An integer in ``[minimum, maximum]`` (a float with an integral value is accepted)."""

    minimum: int | None = None
    maximum: int | None = None
    optional: bool = False

    def convert(self, value: Any) -> int:
        number = _number(value)
        if number != int(number):
            raise ValueError
        if (self.minimum is not None and number < self.minimum) or (
            self.maximum is not None and number > self.maximum
        ):
            raise ValueError
        return int(number)

    def describe(self) -> str:
        if self.minimum is not None and self.maximum is not None:
            text = f"an integer in [{self.minimum}, {self.maximum}]"
        elif self.minimum is not None:
            text = f"an integer >= {self.minimum}"
        else:
            text = "an integer"
        return self._or_null(text)


@dataclasses.dataclass(frozen=True)
class Number(Rule):
    """A finite number in ``[low, high]`` (``low_open``: ``> low``; ``high_open``: ``< high``)."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    optional: bool = False

    def convert(self, value: Any) -> float:
        number = _number(value)
        above = number > self.low if self.low_open else number >= self.low
        below = number < self.high if self.high_open else number <= self.high
        if not (math.isfinite(number) and above and below):
            raise ValueError
        return number

    def describe(self) -> str:
        if self.low == -math.inf and self.high == math.inf:
            text = "a number"
        elif self.high == math.inf:
            text = f"a number {'>' if self.low_open else '>='} {self.low:g}"
        else:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            text = f"a number in {left}{self.low:g}, {self.high:g}{right}"
        return self._or_null(text)


@dataclasses.dataclass(frozen=True)
class Probability(Number):
    """A number in [0, 1]."""

    low: float = 0.0
    high: float = 1.0

    def describe(self) -> str:
        return self._or_null("a probability in [0, 1]")


@dataclasses.dataclass(frozen=True)
class OneOf(Rule):
    """One of ``options`` (strings compared in lower case when ``casefold``)."""

    options: tuple[Any, ...] = ()
    optional: bool = False
    casefold: bool = False

    def convert(self, value: Any) -> Any:
        if self.casefold and isinstance(value, str):
            value = value.lower()
        if value not in self.options:
            raise ValueError
        return value

    def describe(self) -> str:
        return self._or_null("one of " + ", ".join(map(str, self.options)))


@dataclasses.dataclass(frozen=True)
class Flag(Rule):
    """``true`` or ``false``."""

    optional: bool = False

    def convert(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError
        return value

    def describe(self) -> str:
        return self._or_null("true or false")


@dataclasses.dataclass(frozen=True)
class Text(Rule):
    """A non-empty string."""

    optional: bool = False

    def convert(self, value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise ValueError
        return value

    def describe(self) -> str:
        return self._or_null("a non-empty string")


@dataclasses.dataclass(frozen=True)
class Interval(Rule):
    """A pair ``[min, max]`` with ``low < min <= max <= high``."""

    low: float = -math.inf
    high: float = math.inf

    def convert(self, value: Any) -> tuple[float, float]:
        if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2:
            raise ValueError
        a, b = _number(value[0]), _number(value[1])
        if not self.low < a <= b <= self.high:
            raise ValueError
        return a, b

    def describe(self) -> str:
        return f"a pair [min, max] with {self.low:g} < min <= max <= {self.high:g}"


@dataclasses.dataclass(frozen=True)
class ListOf(Rule):
    """A list whose every item follows ``item``, of ``min_length`` to ``max_length`` items."""

    item: Rule = dataclasses.field(default_factory=Text)
    min_length: int = 0
    max_length: int | None = None
    optional: bool = False

    def convert(self, value: Any) -> list[Any]:
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ValueError
        if len(value) < self.min_length:
            raise ValueError
        if self.max_length is not None and len(value) > self.max_length:
            raise ValueError
        return [self.item(v) for v in value]

    def describe(self) -> str:
        if self.max_length is not None and self.max_length == self.min_length:
            size = f"a list of {self.min_length}"
        elif self.min_length:
            size = "a non-empty list"
        else:
            size = "a list"
        return self._or_null(f"{size}, each item {self.item.describe()}")


@dataclasses.dataclass(frozen=True)
class Either(Rule):
    """Accepted by the first of ``rules`` that accepts it."""

    rules: tuple[Rule, ...] = ()
    optional: bool = False

    def convert(self, value: Any) -> Any:
        for rule in self.rules:
            try:
                return rule(value)
            except (ValueError, TypeError):
                continue
        raise ValueError

    def describe(self) -> str:
        return self._or_null(" or ".join(r.describe() for r in self.rules))


def check(rule: Rule, value: Any, key: str) -> Any:
    """``rule(value)``, or one :class:`ConfigError` line naming ``key``, the value and the rule."""
    try:
        return rule(value)
    except (ValueError, TypeError):
        raise ConfigError(f"{key} must be {rule.describe()}, got {value!r}") from None


def plain(values: Any) -> Any:
    """OmegaConf containers as plain Python (resolved); anything else unchanged."""
    if isinstance(values, DictConfig | ListConfig):
        return OmegaConf.to_container(values, resolve=True)
    return values
