"""The knobs of the failure modes (``callbacks.failure_modes`` in conf/callbacks/default.yaml).

:class:`FailureModeSettings` is the schema of those knobs (its fields, defaults and rules);
the training callback (:class:`cnnstress.train.callbacks.FailureModesCallback`) is this
dataclass plus the Lightning hooks, registered as ``schema/callbacks/failure_modes``. For a run
recorded without the callback (or from elsewhere), :func:`settings_from` checks a plain mapping
against the same rules.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

from omegaconf import MISSING

from cnnstress.core.cam import METHODS
from cnnstress.core.data.sources import IMAGE_SIZE
from cnnstress.core.errors import ConfigError
from cnnstress.core.regions import DEFAULT_CENTRE_SIZE
from cnnstress.core.rules import Flag, Integer, OneOf, Probability, Rule, Text, check


# eq=False: the training callback subclasses it and must stay hashable
@dataclasses.dataclass(eq=False)
class FailureModeSettings:
    """How the errors of a run are grouped into modes and described.

    Args:
        threshold: confidence from which an error is a confident one (the run's
            ``confidence_threshold`` in the config).
        max_modes_per_pair: the ICL (the BIC plus the assignments' entropy) chooses how many
            modes the errors of one confusion pair (true -> predicted) form, in
            ``1..max_modes_per_pair``.
        modes_per_pair: a fixed number of modes per pair instead (null: the ICL's choice).
        min_size: the fewest errors a mode has; a pair with fewer forms none (unassigned).
        pca_dim: dimensions a pair's embeddings are reduced to before the mixture.
        embedding_layer: ``head`` (the input of the classifier's last linear layer) or a
            dotted module path of the backbone (its output, spatially averaged).
        centre_size: side in pixels of the centred square standing in for the object (as in
            the background stress).
        cam: measure the CAM mass outside the centre of the most typical members of each mode.
        cam_per_mode: members per mode whose CAM is measured (most typical first).
        cam_method: CAM method (null: the run's ``callbacks.gradcam.method``, else gradcam).
        cam_layer: CAM target layer (null: the run's ``model.target_layer``).
        images_per_mode: representative images per mode in the figure.
        modes_shown: modes per grouping in the figure (the largest).
        seed: the mixture's initialisation.
        batch_size: images per forward pass.
    """

    KEY: ClassVar[str] = "callbacks.failure_modes"
    threshold: Annotated[float, Probability()] = MISSING
    max_modes_per_pair: Annotated[int, Integer(1)] = 4
    modes_per_pair: Annotated[int | None, Integer(1, optional=True)] = None
    min_size: Annotated[int, Integer(2)] = 5
    pca_dim: Annotated[int, Integer(1)] = 4
    embedding_layer: Annotated[str, Text()] = "head"
    centre_size: Annotated[int, Integer(1, IMAGE_SIZE - 1)] = DEFAULT_CENTRE_SIZE
    cam: Annotated[bool, Flag()] = True
    cam_per_mode: Annotated[int, Integer(1)] = 8
    cam_method: Annotated[str | None, OneOf(METHODS, optional=True, casefold=True)] = None
    cam_layer: Annotated[str | None, Text(optional=True)] = None
    images_per_mode: Annotated[int, Integer(1)] = 8
    modes_shown: Annotated[int, Integer(1)] = 10
    seed: Annotated[int, Integer(0)] = 0
    batch_size: Annotated[int, Integer(1)] = 500

    def validate(self, key: str = KEY) -> None:
        """Across fields: ``modes_per_pair`` within ``max_modes_per_pair``."""
        if self.modes_per_pair is not None and self.modes_per_pair > self.max_modes_per_pair:
            raise ConfigError(
                f"{key}.modes_per_pair ({self.modes_per_pair}) must not exceed "
                f"{key}.max_modes_per_pair ({self.max_modes_per_pair})"
            )

    def clustering(self) -> dict[str, int | None]:
        """Keyword arguments of :func:`~cnnstress.core.failure_modes.clustering.cluster_errors`."""
        return {
            "max_modes_per_pair": self.max_modes_per_pair,
            "modes_per_pair": self.modes_per_pair,
            "min_size": self.min_size,
            "pca_dim": self.pca_dim,
            "seed": self.seed,
        }


def _rules() -> dict[str, Rule]:
    hints = typing.get_type_hints(FailureModeSettings, include_extras=True)
    return {
        name: next(m for m in hint.__metadata__ if isinstance(m, Rule))
        for name, hint in hints.items()
        if hasattr(hint, "__metadata__")
    }


def settings_from(
    values: Mapping[str, Any], key: str = FailureModeSettings.KEY
) -> FailureModeSettings:
    """:class:`FailureModeSettings` from a plain mapping (a run's recorded
    ``callbacks.failure_modes``, or the analysis' overrides): every value checked against its
    rule, then across fields; keys that are no knob (``_target_``, ``dirpath`` of older records)
    are ignored, a missing ``threshold`` is an error.

    Raises:
        ConfigError: one line naming ``<key>.<knob>``.
    """
    rules = _rules()
    if "threshold" not in values:
        raise ConfigError(f"{key}.threshold is missing")
    checked = {
        name: check(rule, values[name], f"{key}.{name}")
        for name, rule in rules.items()
        if name in values
    }
    settings = FailureModeSettings(**checked)
    settings.validate(key)
    return settings
