"""Configs: build objects from config nodes, check every value against its rule, and say in
one line what is wrong with a config Hydra could not compose.

Every configurable object declares its knobs once, as the fields of a dataclass (the object
itself, as for augmentation ops, callbacks and stresses, or its settings, as for the data
module and the LightningModule), each with its default, its type and, as ``Annotated``
metadata, its :class:`~cnnstress.core.rules.Rule`. :mod:`cnnstress.app.configs` registers those
dataclasses as Hydra structured configs; the YAML files of ``conf/`` extend them and hold only
recipes and values that differ from the defaults. So a typo fails while Hydra composes, a wrong
type fails with it, and :func:`validate` checks every range once, naming the key where the value
sits.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.errors import HydraException, InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError

from cnnstress.core.errors import ConfigError, UserError
from cnnstress.core.rules import Flag, Integer, Number, Rule, Text, check, plain


def project_root() -> Path:
    """The project root holding ``conf/``: ``$CNNSTRESS_ROOT``, else this source checkout."""
    return Path(os.environ.get("CNNSTRESS_ROOT", Path(__file__).resolve().parents[3]))


@functools.cache
def rules_of(schema: type) -> dict[str, Rule]:
    """Field name -> the :class:`Rule` in its ``Annotated`` type, for a schema dataclass."""
    hints = typing.get_type_hints(schema, include_extras=True)
    rules = {}
    for name, hint in hints.items():
        for meta in getattr(hint, "__metadata__", ()):
            if isinstance(meta, Rule):
                rules[name] = meta
    return rules


def type_rule(schema: type | None, name: str) -> Rule | None:
    """The rule of field ``name`` of ``schema``, else one from its plain type (an integer, a
    number, true or false), else ``None``."""
    if schema is not None and dataclasses.is_dataclass(schema):
        if name in rules_of(schema):
            return rules_of(schema)[name]
        hint = typing.get_type_hints(schema).get(name)
        optional = type(None) in typing.get_args(hint)
        base = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
        plain_rules = {bool: Flag, int: Integer, float: Number, str: Text}
        if base in plain_rules:
            return plain_rules[base](optional=optional)
    return None


def _typed_nodes(node: Any, key: str = "") -> Iterator[tuple[str, DictConfig]]:
    """Every node of a config that a schema dataclass types, with its dotted key."""
    if isinstance(node, DictConfig):
        if node._is_missing() or node._is_none() or node._is_interpolation():
            return
        if dataclasses.is_dataclass(OmegaConf.get_type(node)):
            yield key, node
        for name in node:
            if not key and name == "hydra":  # Hydra's own settings, checked by Hydra
                continue
            child = node._get_node(name)
            yield from _typed_nodes(child, f"{key}.{name}" if key else str(name))
    elif isinstance(node, ListConfig) and not (node._is_none() or node._is_missing()):
        for i in range(len(node)):
            yield from _typed_nodes(node._get_node(i), f"{key}[{i}]")


def validate(cfg: DictConfig) -> None:
    """Check that no schema-typed node has a key its schema lacks (Hydra's ``+key=value`` adds
    any key: a typo such as ``+sed=3`` must not pass; a schema with ``EXTRA_KEYS = True``, the
    Trainer's, takes any), every value a schema declares against its rule, then each schema's
    ``validate(key)`` checks across fields (the root schema's ``validate_root(cfg)``).

    Raises:
        ConfigError: the first value that breaks its rule, in one line naming its key.
    """
    try:
        for key, node in _typed_nodes(cfg):
            schema = OmegaConf.get_type(node)
            prefix = f"{key}." if key else ""
            fields = [f.name for f in dataclasses.fields(schema)]
            extra = [k for k in node if k not in fields and k != "hydra"]
            if extra and not getattr(schema, "EXTRA_KEYS", False):
                where = f"valid keys of {key}:" if key else "the top-level keys are"
                raise ConfigError(f"unknown key {prefix}{extra[0]}; {where} {', '.join(fields)}")
            for name, rule in rules_of(schema).items():
                if not node._get_node(name)._is_interpolation():  # checked where it is set
                    check(rule, plain(node[name]), f"{prefix}{name}")
            hook = getattr(schema, "validate", None)
            if hook is not None and key:
                hook(OmegaConf.to_object(node), key)
        schema = OmegaConf.get_type(cfg)
        if dataclasses.is_dataclass(schema) and hasattr(schema, "validate_root"):
            schema.validate_root(cfg)
    except (OmegaConfBaseException, HydraException) as err:
        raise ConfigError(one_line(err)) from None


def check_group_sections(cfg: DictConfig, group: str) -> None:
    """Every section of ``cfg.<group>`` (e.g. ``stress``) comes from a ``conf/<group>/`` file,
    so carries that file's schema; an untyped one was added with ``+<group>.<name>...``.

    Raises:
        ConfigError: naming the section and the valid ones.
    """
    node = cfg.get(group)
    if not isinstance(node, DictConfig):
        return
    for name in node:
        if not dataclasses.is_dataclass(OmegaConf.get_type(node._get_node(name))):
            options = sorted(p.stem for p in (project_root() / "conf" / group).glob("*.yaml"))
            raise ConfigError(f"unknown {group} {name!r}; valid: {', '.join(options)}")


def build(node: Any, **kwargs: Any) -> Any:
    """The object a config node describes: a schema-typed node becomes its dataclass (the
    object itself, or its settings), a node with ``_target_`` is instantiated by Hydra (with
    ``kwargs``), any other mapping becomes a dict of its children built, ``None`` stays
    ``None``.

    A :class:`UserError` raised by a constructor is passed on unwrapped; any other constructor
    error (e.g. Lightning rejecting ``trainer.precision=foo``) becomes one :class:`ConfigError`
    line.
    """
    if node is None:
        return None
    if isinstance(node, DictConfig) and "_target_" not in node:
        if dataclasses.is_dataclass(OmegaConf.get_type(node)):
            return OmegaConf.to_object(node)
        return {name: build(child) for name, child in node.items()}  # a mapping of nodes
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, UserError):
            raise err.__cause__ from None
        raise ConfigError(one_line(err)) from err


def one_line(err: BaseException) -> str:
    """An exception's message on one line (Hydra and OmegaConf add detail lines)."""
    text = str(err).split("\n    full_key:")[0]
    return " ".join(text.split())


def composition_error(err: BaseException, schema_of: Any = None) -> ConfigError:
    """One line for an error Hydra raised while composing a config.

    ``schema_of(key)`` (optional) returns the schema dataclass of the node holding dotted
    ``key``, for the rule of a value of the wrong type.
    """
    cause = err.__cause__ if err.__cause__ is not None else err
    key = getattr(cause, "full_key", None)
    if isinstance(cause, ValidationError) and key:
        parent, _, name = key.rpartition(".")
        rule = type_rule(schema_of(parent) if schema_of else None, name)
        value = _override_value(str(err), key)
        if rule is not None:
            return ConfigError(f"{key} must be {rule.describe()}, got {value!r}")
        return ConfigError(f"{key}: {one_line(cause)}")
    text = one_line(err)
    if text.startswith("Could not override '"):
        name = text.split("'")[1]
        return ConfigError(
            f"unknown key {name} (a key the config does not have; add a new one with "
            f"+{name}=...; `--cfg job` lists every key)"
        )
    return ConfigError(text)


def _override_value(message: str, key: str) -> Any:
    """The value of ``key=value`` in Hydra's "Error merging override key=value"."""
    marker = f"override {key}="
    return message.split(marker, 1)[1].split()[0] if marker in message else "?"
