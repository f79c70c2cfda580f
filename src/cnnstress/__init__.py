"""cnnstress: stress-test CIFAR image classifiers with PyTorch Lightning and Hydra."""

__version__ = "0.1.0"

import collections

import torch

# MultiStepLR keeps its milestones in a Counter: allow it when checkpoints load weights-only.
torch.serialization.add_safe_globals([collections.Counter])
