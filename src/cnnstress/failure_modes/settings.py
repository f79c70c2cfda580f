"""The knobs of the failure modes (``callbacks.failure_modes`` in conf/callbacks/default.yaml)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from cnnstress.cam import METHODS
from cnnstress.data.sources import IMAGE_SIZE
from cnnstress.errors import ConfigError
from cnnstress.regions import DEFAULT_CENTRE_SIZE
from cnnstress.settings import Flag, Integer, Number, OneOf, Settings, Text, setting


# eq=False: the training callback subclasses it and must stay hashable
@dataclasses.dataclass(eq=False)
class FailureModeSettings(Settings):
    """How the errors of a run are grouped into modes and described.

    Args:
        threshold: confidence from which an error is a confident one (the run's
            ``callbacks.high_conf_failures.threshold``).
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
    threshold: float = setting(0.8, Number(0.0, 1.0))
    max_modes_per_pair: int = setting(4, Integer(1))
    modes_per_pair: int | None = setting(None, Integer(1, optional=True))
    min_size: int = setting(5, Integer(2))
    pca_dim: int = setting(4, Integer(1))
    embedding_layer: str = setting("head", Text())
    centre_size: int = setting(DEFAULT_CENTRE_SIZE, Integer(1, IMAGE_SIZE - 1))
    cam: bool = setting(True, Flag())
    cam_per_mode: int = setting(8, Integer(1))
    cam_method: str | None = setting(None, OneOf(METHODS, optional=True, casefold=True))
    cam_layer: str | None = setting(None, Text(optional=True))
    images_per_mode: int = setting(8, Integer(1))
    modes_shown: int = setting(10, Integer(1))
    seed: int = setting(0, Integer(0))
    batch_size: int = setting(500, Integer(1))

    def validate(self) -> None:
        if self.modes_per_pair is not None and self.modes_per_pair > self.max_modes_per_pair:
            raise ConfigError(
                f"{self.KEY}.modes_per_pair ({self.modes_per_pair}) must not exceed "
                f"{self.KEY}.max_modes_per_pair ({self.max_modes_per_pair})"
            )

    def clustering(self) -> dict[str, int | None]:
        """Keyword arguments of :func:`~cnnstress.failure_modes.clustering.cluster_errors`."""
        return {
            "max_modes_per_pair": self.max_modes_per_pair,
            "modes_per_pair": self.modes_per_pair,
            "min_size": self.min_size,
            "pca_dim": self.pca_dim,
            "seed": self.seed,
        }
