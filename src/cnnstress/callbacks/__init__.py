"""Lightning callbacks: training speed, and the stress-test collectors."""

from cnnstress.callbacks.evaluation import ConfusionCalibration
from cnnstress.callbacks.failures import HighConfidenceFailures
from cnnstress.callbacks.gradcam import GradCAMGrids
from cnnstress.callbacks.learning_rate import LearningRate
from cnnstress.callbacks.progress import EpochLog
from cnnstress.callbacks.speed import TrainSpeed

__all__ = [
    "ConfusionCalibration",
    "EpochLog",
    "GradCAMGrids",
    "HighConfidenceFailures",
    "LearningRate",
    "TrainSpeed",
]
