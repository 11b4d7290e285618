"Test-set predictions computed once, overall and per-class accuracy, and reloading a run's trained weights"
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from fastai.callback.core import Callback
from fastai.learner import Learner

from cifar_fastai.checkpoint import load_weights
from cifar_fastai.config import ConfigError, saved_config
from cifar_fastai.io import load_tensors
from cifar_fastai.loaders import ds_idx_of_test
from cifar_fastai.layout import WEIGHTS
from cifar_fastai.run import data_of_run, run_dls, run_learner

__all__ = ['Predictions', 'FlipBatch', 'MoveBatch', 'TTA_LEVELS', 'tta_views', 'tta_name', 'predict', 'class_accuracy',
           'format_accuracy', 'load_run']

_FIX = 'train the run again, or put back a copy of the file'


@dataclass
class Predictions:
    "Probabilities, targets and predicted classes for every image of a split, in loader order"
    probs: torch.Tensor    # (N, n_classes) float
    targets: torch.Tensor  # (N,) int64
    classes: list

    @property
    def preds(self) -> torch.Tensor: return self.probs.argmax(dim=1)
    @property
    def accuracy(self) -> float: return (self.preds == self.targets).float().mean().item()


class FlipBatch(Callback):
    "Mirror every input batch left to right: the second view of flip test-time augmentation"
    order = 1  # before `Autocast` and `ChannelsLast`, which see the mirrored batch
    def before_batch(self): self.learn.xb = tuple(x.flip(-1) for x in self.xb)


class MoveBatch(Callback):
    "Move every input batch by `dy`, `dx` pixels (down, right), the edge filled by reflection: a translated view"
    order = 0  # before `FlipBatch`: a view is moved, then mirrored
    def __init__(self, dy: int, dx: int): self.dy, self.dx = dy, dx
    def before_batch(self):
        h, w = self.xb[0].shape[-2:]
        pad = lambda x: F.pad(x, (1, 1, 1, 1), mode='reflect')
        self.learn.xb = tuple(pad(x)[..., 1 - self.dy:1 - self.dy + h, 1 - self.dx:1 - self.dx + w] for x in self.xb)


# 'flip': the image and its mirror image, equal weights; 'translate': airbench's multi-crop views (Jordan 2024,
# arXiv 2404.00498): those two at 1/4 each, and the image moved one pixel up-left or down-right, then mirrored or
# not, at 1/8 each
TTA_LEVELS = ('flip', 'translate')
_TTA_NAMES = {'flip': 'flip', 'translate': 'flip and 1-pixel translation'}


def tta_views(level: str) -> list[tuple[float, list]]:
    "The views of test-time augmentation `level` as (weight, callbacks that make the view)"
    if level not in TTA_LEVELS: raise ValueError(f"tta={level!r} is not one of {', '.join(TTA_LEVELS)}")
    flips = [[], [FlipBatch()]]
    if level == 'flip': return [(1 / 2, f) for f in flips]
    moves = [MoveBatch(d, d) for d in (-1, 1)]
    return [(1 / 4, f) for f in flips] + [(1 / 8, f + [m]) for m in moves for f in flips]


def tta_name(level) -> str:
    "How a report names test-time augmentation `level` (True: 'flip')"
    return _TTA_NAMES['flip' if level is True else level]


def predict(learn: Learner, ds_idx: int | None = None, tta: bool | str = False) -> Predictions:
    "Predict every image of split `ds_idx` (default the test split) once, without augmentation or shuffling"
    # tta: the weighted mean of the probabilities of the views of `tta_views` (True: 'flip')
    ds_idx = ds_idx_of_test(learn.dls) if ds_idx is None else ds_idx
    if not tta:
        probs, targets = learn.get_preds(ds_idx=ds_idx)
        return Predictions(probs.float(), targets.long(), list(learn.dls.vocab))
    probs = targets = None
    for weight, cbs in tta_views('flip' if tta is True else tta):
        view, targets = learn.get_preds(ds_idx=ds_idx, cbs=cbs)
        probs = weight * view.float() + (0 if probs is None else probs)
    return Predictions(probs, targets.long(), list(learn.dls.vocab))


def class_accuracy(p: Predictions) -> dict:
    "Accuracy of each class in `p`, keyed by class name, in class order"
    preds = p.preds
    return {c: (preds[p.targets == i] == i).float().mean().item() if (p.targets == i).any() else float('nan')
            for i, c in enumerate(p.classes)}


def format_accuracy(p: Predictions) -> str:
    "The per-class accuracy table of the reference reports, then the overall accuracy"
    lines = [f"Accuracy of {c:>10s} : {100 * a:6.2f} %" for c, a in class_accuracy(p).items()]
    return '\n'.join(lines + [f"Accuracy on the {len(p.targets)} test images: {100 * p.accuracy:.2f} %"])


def _run_data(run: Path, config, record: dict, data, train: bool, progress: bool):
    "The loaders of the data `run` recorded, or of `data`, which must hold the classes the run was trained on"
    dls = run_dls(config, data=data_of_run(run, record, data), test_only=not train, progress=progress)
    trained_on = record.get('classes')
    if trained_on is not None and list(dls.vocab) != list(trained_on):
        raise ConfigError(f"--data {data} holds the classes {list(dls.vocab)}, but {run} was trained on {trained_on}: "
                          f"pass the data it was trained on")
    return dls


def load_run(run, data=None, train: bool = False, progress: bool = True) -> Learner:
    "A `Learner` with the trained weights of run folder `run` (a plain `state_dict`, loaded with `weights_only`)"
    # data: where to read the images instead of the data the run recorded; train: read the training split too (the
    # augmentation picture shows training images), which evaluating does not need; progress: a bar while decoding
    run = Path(run)
    config, record = saved_config(run)
    weights = run / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} does not exist: the run has not finished training; finish it with: "
                                f"cifar-fastai train --resume {run}")
    state = load_tensors(weights, "a weights file (a plain state dict)", _FIX)
    learn = run_learner(_run_data(run, config, record, data, train, progress), config, run)
    load_weights(learn.model, state, weights, _FIX)
    return learn
