"Test helpers: tiny synthetic CIFAR-shaped data, a tiny model, a Ctrl-C after an epoch, the scripts as modules"
import importlib.util
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from fastai.callback.core import Callback
from torch import nn

from cifar_fastai.data import Cifar10

CLASSES = [f'class{i}' for i in range(10)]


def synthetic_cifar(n_train: int = 64, n_test: int = 32, seed: int = 0) -> Cifar10:
    "Random images whose label is encoded in their mean brightness, so a model can learn a little"
    rng = np.random.default_rng(seed)
    def split(n):
        y = rng.integers(0, 10, n).astype(np.int64)
        x = np.clip(rng.normal(20 + 20 * y[:, None, None, None], 30, (n, 32, 32, 3)), 0, 255).astype(np.uint8)
        return x, y
    (trx, try_), (tex, tey) = split(n_train), split(n_test)
    return Cifar10(trx, try_, tex, tey, CLASSES, 'synthetic')


def tiny_model(n_out: int = 10) -> nn.Module:
    "A model of 330 weights with batch norm, in place of the ResNet18 where a test is about files, not accuracy"
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, n_out))


@contextmanager
def tiny_models():
    "In the block, `cifar_learner` (and so `train`) makes `tiny_model`s in place of ResNet18s"
    with pytest.MonkeyPatch.context() as m:
        m.setattr('cifar_fastai.learner.resnet18', tiny_model)
        yield


class InterruptAfter(Callback):
    "Raise `KeyboardInterrupt` once epoch `n` is complete and checkpointed, as Ctrl-C would"
    order = 90

    def __init__(self, n): self.n = n
    def after_epoch(self):
        if self.epoch + 1 == self.n: raise KeyboardInterrupt


class NanFrom(Callback):
    "Make the training loss NaN from the `k`th batch this fit trains on, as a rate too high for the numbers does"
    order = -10  # before `StopOnNonFinite` (-5) looks at the loss
    def __init__(self, k: int): self.k, self.seen = k, 0
    def after_loss(self):
        if not self.training: return
        self.seen += 1
        if self.seen >= self.k: self.learn.loss = torch.tensor(float('nan'))


def load_script(name: str):
    "scripts/`name`.py as a module (scripts/ is not a package), so that tests pin what the benchmarks measure"
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1]/'scripts'/f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
