"fastai `DataLoaders` over CIFAR-10 held in memory: train, valid (the test split, or a held-out part of train), test"
import os
from pathlib import Path

import numpy as np
import torch
from fastai.data.core import Datasets, DataLoaders
from fastai.data.transforms import Categorize, IntToFloatTensor, Normalize
from fastai.torch_core import TensorImage, default_device, set_seed
from fastai.vision.core import PILImage
from fasttransform import Transform

from cifar_fastai.data import Cifar10, read_cifar10
from cifar_fastai.transforms import CIFAR10_MEAN, CIFAR10_STD, AlbumentationsTransform, cifar_augs

__all__ = ['ArrayImage', 'ArrayLabel', 'cifar_dls', 'default_workers', 'holdout_split', 'ds_idx_of_test']


class ArrayImage(Transform):
    "Item `i` of the in-memory `images` as a (3, H, W) uint8 `TensorImage`; also takes an image, array or file"
    def __init__(self, images: np.ndarray | None = None): self.images = images

    def encodes(self, i: int) -> TensorImage: return self.encodes(self.images[i])
    def encodes(self, arr: np.ndarray) -> TensorImage: return TensorImage(torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1))
    def encodes(self, img: PILImage) -> TensorImage: return self.encodes(np.asarray(img.convert('RGB')))
    def encodes(self, fn: Path | str) -> TensorImage: return self.encodes(PILImage.create(fn))

    exporting = False  # set by `CifarLearner.export`: the export keeps the pipeline, not 180 MB of pixels

    def __getstate__(self): return {**self.__dict__, 'images': None} if ArrayImage.exporting else self.__dict__


class ArrayLabel(Transform):
    "Class name of item `i` from the in-memory integer `labels`"
    def __init__(self, labels: np.ndarray | None = None, classes=()): self.labels, self.classes = labels, list(classes)
    def encodes(self, i: int) -> str: return self.classes[self.labels[i]]
    def __getstate__(self): return {**self.__dict__, 'labels': None} if ArrayImage.exporting else self.__dict__


def default_workers(device: torch.device) -> int:
    "Loader processes: none on CPU, where they compete with the model for cores; a few beside a GPU"
    return 0 if device.type == 'cpu' else min(8, os.cpu_count() or 1)


def holdout_split(labels: np.ndarray, valid_pct: float, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    "Indices (train, valid) of `labels`, with `valid_pct` of each class held out at random, fixed by `seed`"
    if not 0 <= valid_pct < 1:
        raise ValueError(f"`valid_pct` (the share of training images held out) must be in [0, 1), got {valid_pct!r}")
    rng, valid = np.random.default_rng(0 if seed is None else seed), []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        valid.append(rng.permutation(members)[:round(valid_pct * len(members))])
    valid = np.sort(np.concatenate(valid)) if valid else np.zeros(0, np.int64)
    return np.setdiff1d(np.arange(len(labels)), valid), valid


def ds_idx_of_test(dls: DataLoaders) -> int:
    "Which loader of `dls` holds the test split: 2 when a validation split was held out of train, else 1"
    return 2 if len(dls.loaders) > 2 else 1


def cifar_dls(source=None, bs: int = 64, augs='default', valid_augs=None, seed: int | None = None,
              num_workers: int | None = None, device=None, val_bs: int | None = None, progress: bool = True,
              valid_pct: float = 0., **kwargs) -> DataLoaders:
    "CIFAR-10 `DataLoaders` from `source` (a path, 'sample', 'cifar10', a `Cifar10` or None to search)"
    # valid_pct > 0: that share of each class of train is the validation set and the test split a third loader
    # (`dls[2]`, see `ds_idx_of_test`); 0: the test split is the validation set, as the reports and fastai's examples
    if not isinstance(bs, int) or bs < 1: raise ValueError(f"`bs` must be a whole number >= 1, got {bs!r}")
    data = source if isinstance(source, Cifar10) else read_cifar10(source, progress=progress)  # progress: decoding bar
    device = torch.device(device) if device is not None else default_device()
    if seed is not None: set_seed(seed)
    n_train, n_test = len(data.train_y), len(data.test_y)
    images = np.concatenate([data.train_x, data.test_x])
    labels = np.concatenate([data.train_y, data.test_y])
    train, valid = holdout_split(data.train_y, valid_pct, seed)
    test = list(range(n_train, n_train + n_test))
    splits = (train.tolist(), valid.tolist(), test) if valid_pct else (train.tolist(), test)
    tfms = [[ArrayImage(images)], [ArrayLabel(labels, data.classes), Categorize(vocab=data.classes, sort=False)]]
    dsets = Datasets(list(range(n_train + n_test)), tfms, splits=splits)
    aug = AlbumentationsTransform(cifar_augs() if augs == 'default' else augs, valid_augs, seed=seed)
    stats = [torch.tensor(s, device=device).view(1, 3, 1, 1) for s in (CIFAR10_MEAN, CIFAR10_STD)]
    workers = default_workers(device) if num_workers is None else num_workers
    dls = dsets.dataloaders(bs=bs, val_bs=val_bs or 2 * bs, after_item=[aug], device=device, num_workers=workers,
                            after_batch=[IntToFloatTensor(), Normalize(*stats)], **kwargs)
    dls.data = data  # the arrays and class names, for interpretation
    return dls
