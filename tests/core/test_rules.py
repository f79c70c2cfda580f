"""The range and choice rules of config values (cnnstress.core.rules): what each accepts, what
it converts a value to, and the one line a wrong value gives; the key a message names is where
the value sits in the config (cnnstress.core.config.validate)."""

from __future__ import annotations

import dataclasses
import math
from typing import Annotated, Any

import pytest
from omegaconf import OmegaConf, open_dict

from cnnstress.core.config import validate
from cnnstress.core.errors import ConfigError
from cnnstress.core.rules import (
    Either,
    Flag,
    Integer,
    Interval,
    ListOf,
    Number,
    OneOf,
    Probability,
    Rule,
    Text,
    check,
    plain,
)


def message(rule: Rule, value: Any, key: str = "k") -> str:
    """The one line ``check`` raises for ``value``."""
    with pytest.raises(ConfigError) as err:
        check(rule, value, key)
    assert "\n" not in str(err.value)
    return str(err.value)


# -- Integer ------------------------------------------------------------------------------------
def test_integer_accepts_integers_and_integral_floats_in_range():
    rule = Integer(1, 10)
    assert rule(1) == 1 and rule(10) == 10
    converted = rule(3.0)
    assert converted == 3 and type(converted) is int
    assert Integer()(-(2**40)) == -(2**40)


@pytest.mark.parametrize("value", [0, 11, 2.5, True, "3", None, [3], math.nan, math.inf])
def test_integer_refuses_values_out_of_range_or_not_integers(value):
    assert message(Integer(1, 10), value, "seed") == (
        f"seed must be an integer in [1, 10], got {value!r}"
    )


def test_integer_describes_its_range():
    assert Integer().describe() == "an integer"
    assert Integer(0).describe() == "an integer >= 0"
    assert Integer(0, 2**32 - 1).describe() == "an integer in [0, 4294967295]"
    assert Integer(1, optional=True).describe() == "an integer >= 1 or null"


def test_optional_rules_take_none_and_name_null_in_their_message():
    assert Integer(1, optional=True)(None) is None
    assert message(Integer(1, optional=True), 0, "max_images") == (
        "max_images must be an integer >= 1 or null, got 0"
    )
    assert message(Integer(1), None, "max_images") == (
        "max_images must be an integer >= 1, got None"
    )


# -- Number, Probability ------------------------------------------------------------------------
def test_number_converts_to_float_and_honours_open_and_closed_ends():
    assert Number()(3) == 3.0 and type(Number()(3)) is float
    half_open = Number(0.0, 1.0, high_open=True)  # label smoothing
    assert half_open(0.0) == 0.0 and half_open(0.999) == 0.999
    assert message(half_open, 1.0, "module.loss.label_smoothing") == (
        "module.loss.label_smoothing must be a number in [0, 1), got 1.0"
    )
    positive = Number(0.0, low_open=True)  # a learning rate
    assert positive(1e-9) == 1e-9
    assert message(positive, 0, "optimizer.lr") == "optimizer.lr must be a number > 0, got 0"
    assert message(Number(0.0), -0.5, "optimizer.weight_decay") == (
        "optimizer.weight_decay must be a number >= 0, got -0.5"
    )
    assert message(Number(0.0, 1.0, low_open=True, high_open=True), 0.0) == (
        "k must be a number in (0, 1), got 0.0"
    )


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, True, "0.5", None])
def test_number_refuses_non_finite_values_bools_and_strings(value):
    assert message(Number(), value) == f"k must be a number, got {value!r}"


def test_probability_is_a_number_in_the_closed_unit_interval():
    rule = Probability()
    assert rule(0) == 0.0 and rule(1) == 1.0 and rule(0.8) == 0.8
    for value in (-0.01, 1.01, math.nan):
        assert message(rule, value, "thresholds[1]") == (
            f"thresholds[1] must be a probability in [0, 1], got {value!r}"
        )
    assert Probability(optional=True).describe() == "a probability in [0, 1] or null"


# -- OneOf, Flag, Text --------------------------------------------------------------------------
def test_one_of_accepts_only_its_options_and_lists_them():
    rule = OneOf(("cos", "linear"))
    assert rule("cos") == "cos"
    assert message(rule, "Cos", "scheduler.anneal_strategy") == (
        "scheduler.anneal_strategy must be one of cos, linear, got 'Cos'"
    )


def test_one_of_with_casefold_lowers_strings_before_comparing():
    rule = OneOf(("gradcam", "eigencam"), optional=True, casefold=True)
    assert rule("GradCAM") == "gradcam"
    assert rule(None) is None
    assert message(rule, "scorecam", "gradcam.method") == (
        "gradcam.method must be one of gradcam, eigencam or null, got 'scorecam'"
    )


def test_flag_takes_only_booleans():
    assert Flag()(True) is True and Flag()(False) is False
    for value in (1, 0, "true", None):
        assert message(Flag(), value, "train") == f"train must be true or false, got {value!r}"


def test_text_takes_only_non_empty_strings():
    assert Text()("baseline") == "baseline"
    assert Text(optional=True)(None) is None
    for value in ("", 3, None, ["a"]):
        assert message(Text(), value, "reference") == (
            f"reference must be a non-empty string, got {value!r}"
        )


# -- Interval, ListOf, Either -------------------------------------------------------------------
def test_interval_is_an_ordered_pair_inside_its_bounds():
    rule = Interval(0.0, 1.0)
    assert rule([0.9, 0.999]) == (0.9, 0.999)
    assert rule((0.5, 0.5)) == (0.5, 0.5)
    for value in ([0.999, 0.9], [0.0, 0.5], [0.5, 1.5], [0.5], "ab", [0.5, "x"]):
        assert message(rule, value, "optimizer.betas") == (
            f"optimizer.betas must be a pair [min, max] with 0 < min <= max <= 1, got {value!r}"
        )


def test_list_of_checks_its_length_and_converts_every_item():
    rule = ListOf(Probability(), 1)
    assert rule([0.5, 1]) == [0.5, 1.0]
    assert rule((0.8,)) == [0.8]
    expected = "thresholds must be a non-empty list, each item a probability in [0, 1], got {!r}"
    for value in ([], [0.5, 2.0], "0.5", 0.5):
        assert message(rule, value, "thresholds") == expected.format(value)


def test_list_of_describes_its_size():
    assert ListOf().describe() == "a list, each item a non-empty string"
    assert ListOf(Integer(0), 2, 2).describe() == "a list of 2, each item an integer >= 0"
    assert ListOf(Text(), optional=True).describe() == (
        "a list, each item a non-empty string or null"
    )
    assert ListOf(Integer(0), 2, 2)([1, 2]) == [1, 2]
    assert message(ListOf(Integer(0), 2, 2), [1, 2, 3]) == (
        "k must be a list of 2, each item an integer >= 0, got [1, 2, 3]"
    )


def test_either_takes_the_first_rule_that_accepts_and_names_all_of_them():
    rule = Either((OneOf(("benchmark", "all")), ListOf(Text(), 1), Text()))
    assert rule("all") == "all"
    assert rule(["gaussian_noise"]) == ["gaussian_noise"]
    assert rule("fog") == "fog"
    assert message(rule, [], "stress.corruption_suite.types") == (
        "stress.corruption_suite.types must be one of benchmark, all or a non-empty list, "
        "each item a non-empty string or a non-empty string, got []"
    )
    steps = Either((OneOf((-1,)), Integer(1)))
    assert steps(-1) == -1 and steps(5.0) == 5
    assert message(steps, 0, "trainer.max_steps") == (
        "trainer.max_steps must be one of -1 or an integer >= 1, got 0"
    )


def test_plain_turns_omegaconf_containers_into_python_and_resolves_them():
    node = OmegaConf.create({"a": [1, "${b}"], "b": 2})
    assert plain(node) == {"a": [1, 2], "b": 2}
    assert plain(node.a) == [1, 2] and type(plain(node.a)) is list
    assert plain(3) == 3


# -- the key a message names is where the value sits -------------------------------------------
@dataclasses.dataclass
class Inner:
    size: Annotated[int, Integer(1)] = 8
    p: Annotated[float, Probability()] = 0.5


@dataclasses.dataclass
class Outer:
    rate: Annotated[float, Number(0.0, low_open=True)] = 0.1
    inner: Inner = dataclasses.field(default_factory=Inner)
    items: list[Inner] = dataclasses.field(default_factory=lambda: [Inner(), Inner()])
    thresholds: Annotated[list[float], ListOf(Probability(), 1)] = dataclasses.field(
        default_factory=lambda: [0.5]
    )


def test_validate_names_the_dotted_key_where_the_wrong_value_sits():
    cfg = OmegaConf.structured(Outer)
    validate(cfg)  # the defaults follow their rules
    cases = {
        "rate": (0.0, "rate must be a number > 0, got 0.0"),
        "inner.size": (0, "inner.size must be an integer >= 1, got 0"),
        "inner.p": (1.5, "inner.p must be a probability in [0, 1], got 1.5"),
        "items[1].size": (-2, "items[1].size must be an integer >= 1, got -2"),
        "thresholds": (
            [0.5, 1.2],
            "thresholds must be a non-empty list, each item a probability in [0, 1], "
            "got [0.5, 1.2]",
        ),
    }
    for key, (value, expected) in cases.items():
        bad = OmegaConf.structured(Outer)
        OmegaConf.update(bad, key, value)
        with pytest.raises(ConfigError) as err:
            validate(bad)
        assert str(err.value) == expected


def test_validate_checks_an_interpolated_value_where_it_is_set():
    @dataclasses.dataclass
    class Linked:
        epochs: Annotated[int, Integer(1)] = 3
        t_max: Annotated[int, Integer(1)] = "${epochs}"  # type: ignore[assignment]

    cfg = OmegaConf.structured(Linked)
    cfg.epochs = 0
    with pytest.raises(ConfigError, match=r"^epochs must be an integer >= 1, got 0$"):
        validate(cfg)


def test_validate_refuses_a_key_the_schema_lacks_and_lists_the_valid_ones():
    cfg = OmegaConf.structured(Outer)
    with open_dict(cfg.inner):  # as Hydra's +inner.sise=3 does
        cfg.inner.sise = 3
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value) == "unknown key inner.sise; valid keys of inner: size, p"
