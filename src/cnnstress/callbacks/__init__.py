"""Lightning callbacks: training speed, and the stress-test collectors."""

from cnnstress.callbacks.speed import TrainSpeed

__all__ = ["TrainSpeed"]
