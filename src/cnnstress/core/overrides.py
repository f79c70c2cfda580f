"""Command-line overrides, read with Hydra's own parser: the group-choice pre-check of the
entry points and the overrides that change a run's improvement."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import OverrideParseException
from omegaconf import DictConfig, OmegaConf

from cnnstress.core.config import project_root
from cnnstress.core.errors import ConfigError


def parse_overrides(args: Sequence[str]) -> list[Override]:
    """Parse command-line overrides with Hydra's own parser (flags such as ``-m`` and the
    values of ``--cfg job`` are left out: only ``key=value``-style arguments are parsed)."""
    parser = OverridesParser.create()
    parsed = []
    for arg in args:
        if arg.startswith("-") or ("=" not in arg and not arg.startswith("~")):
            continue
        try:
            parsed += parser.parse_overrides([arg])
        except OverrideParseException as err:
            message = " ".join(str(err).split())
            raise ConfigError(f"cannot parse override {arg!r}: {message}") from None
    return parsed


def override_values(override: Override) -> list[Any]:
    """The values an override sets: one, or each value of a sweep (``a,b``, ``[],[a,b]``)."""
    if override.is_delete():
        return []
    return list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]


def check_group_choices(args: Sequence[str], conf_dir: Path | None = None) -> None:
    """Reject a command-line ``group=option`` naming an option ``conf/<group>/`` does not have
    (also inside lists and sweeps: ``augmentation=[crop,blur]``, ``model=a,b``), listing the
    valid ones.

    Hydra says so itself for a single option, but for a list it only says it "could not load"
    the option. Plugin groups (``hydra/...``) are left to Hydra.
    """
    conf_dir = conf_dir or project_root() / "conf"
    for override in parse_overrides(args):
        key = override.key_or_group
        if not key:
            raise ConfigError(
                f"override {override.input_line!r} has no key: write key=value, e.g. "
                "model=simple_cnn"
            )
        group = conf_dir / key
        if "/" in key or "." in key or not group.is_dir():
            continue
        options = sorted(path.stem for path in group.glob("*.yaml"))
        for value in override_values(override):
            for option in value if isinstance(value, list) else [value]:
                if option is not None and str(option) not in options:
                    raise ConfigError(
                        f"unknown {key} option {option!r}; valid choices: {', '.join(options)}"
                    )


def overrides_changing(overrides: Sequence[str], prefixes: Sequence[str]) -> list[str]:
    """The overrides (as typed) that set a key or group at or below one of ``prefixes``."""
    return [
        o.input_line
        for o in parse_overrides(overrides)
        if any(o.key_or_group == p or o.key_or_group.startswith(f"{p}.") for p in prefixes)
    ]


def improvement_changes(
    cfg: DictConfig, overrides: Sequence[str], keys: Sequence[str], config_name: str = "train"
) -> list[str]:
    """The command-line overrides that make ``cfg``'s ``keys`` (augmentation, loss) differ from
    what its improvement sets; empty when the run is exactly its improvement.

    Composes ``config_name`` again without the overrides touching ``keys`` and compares: so
    ``improvement=baseline augmentation=[crop,flip]`` (the baseline's own list) is exact.
    """
    touching = overrides_changing(overrides, keys)
    if not touching:
        return []
    rest = [o for o in overrides if o not in touching]
    if GlobalHydra.instance().is_initialized():  # inside a Hydra app
        canonical = compose(config_name=config_name, overrides=rest)
    else:
        with initialize_config_dir(config_dir=str(project_root() / "conf"), version_base="1.3"):
            canonical = compose(config_name=config_name, overrides=rest)

    def section(config: DictConfig, key: str) -> Any:
        node = OmegaConf.select(config, key, default=None)
        return OmegaConf.to_container(node, resolve=True) if node is not None else None

    same = all(section(canonical, k) == section(cfg, k) for k in keys)
    return [] if same else touching


def check_analysis_output(args: Sequence[str]) -> None:
    """Refuse ``hydra.run.dir=DIR`` for an analysis when DIR already holds one: Hydra would
    rewrite its ``.hydra/`` before the analysis even starts."""
    for override in parse_overrides(args):
        if override.key_or_group == "hydra.run.dir" and not override.is_sweep_override():
            check_report_free(Path(str(override.value())))


def check_report_free(out: Path) -> None:
    """:class:`ConfigError` when ``out`` already holds an analysis (its ``report.html``)."""
    if (out / "report.html").exists():
        raise ConfigError(
            f"{out} already holds an analysis (report.html); give another hydra.run.dir, or "
            "leave it out for a new directory"
        )
