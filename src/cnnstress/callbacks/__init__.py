"""Lightning callbacks: training speed, weight averaging, and the stress-test collectors."""

from cnnstress.callbacks.evaluation import ConfusionCalibration
from cnnstress.callbacks.failure_modes import FailureModesCallback
from cnnstress.callbacks.failures import HighConfidenceFailures
from cnnstress.callbacks.gradcam import GradCAMGrids
from cnnstress.callbacks.learning_rate import LearningRate
from cnnstress.callbacks.progress import EpochLog
from cnnstress.callbacks.speed import TrainSpeed
from cnnstress.callbacks.weight_averaging import WeightAverage

__all__ = [
    "ConfusionCalibration",
    "EpochLog",
    "FailureModesCallback",
    "GradCAMGrids",
    "HighConfidenceFailures",
    "LearningRate",
    "TrainSpeed",
    "WeightAverage",
]
