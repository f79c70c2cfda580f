"""Lightning callbacks: training speed, weight averaging, and the stress-test collectors."""

from cnnstress.train.callbacks.evaluation import EvaluationCallback
from cnnstress.train.callbacks.failure_modes import FailureModesCallback
from cnnstress.train.callbacks.failures import HighConfidenceFailures
from cnnstress.train.callbacks.gradcam import GradCAMGrids
from cnnstress.train.callbacks.learning_rate import LearningRate
from cnnstress.train.callbacks.progress import EpochLog
from cnnstress.train.callbacks.speed import TrainSpeed
from cnnstress.train.callbacks.weight_averaging import WeightAverage

__all__ = [
    "EpochLog",
    "EvaluationCallback",
    "FailureModesCallback",
    "GradCAMGrids",
    "HighConfidenceFailures",
    "LearningRate",
    "TrainSpeed",
    "WeightAverage",
]
