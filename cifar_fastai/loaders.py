"fastai `DataLoaders` over CIFAR-10 held in memory: train, valid (the test split, or a held-out part of train), test"
import os
from pathlib import Path

import numpy as np
import torch
from fastai.data.core import Datasets, DataLoaders, TfmdDL
from fastai.data.load import _loaders
from fastai.data.transforms import Categorize, IntToFloatTensor, Normalize
from fastai.torch_core import TensorCategory, TensorImage, default_device, set_seed, to_device
from fastai.vision.core import PILImage
from fastcore.basics import chunked
from fasttransform import Transform
from torch.utils.data import get_worker_info

from cifar_fastai.checks import whole, within
from cifar_fastai.data import Cifar10, read_cifar10
from cifar_fastai.errors import ConfigError
from cifar_fastai.transforms import CIFAR10_MEAN, CIFAR10_STD, AlbumentationsTransform, cifar_augs

__all__ = ['ArrayImage', 'ArrayLabel', 'AsyncCopy', 'ArrayDL', 'cifar_dls', 'default_workers', 'holdout_split',
           'ds_idx_of_test']


class ArrayImage(Transform):
    "Item `i` of the in-memory `images` as a (3, H, W) uint8 `TensorImage`; also takes an image, array or file"
    def __init__(self, images: np.ndarray | None = None): self.images = images

    def encodes(self, i: int) -> TensorImage: return self.encodes(self.images[i])
    def encodes(self, arr: np.ndarray) -> TensorImage:
        return TensorImage(torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1))
    def encodes(self, img: PILImage) -> TensorImage: return self.encodes(np.asarray(img.convert('RGB')))
    def encodes(self, fn: Path | str) -> TensorImage: return self.encodes(PILImage.create(fn))

    exporting = False  # set by `CifarLearner.export`: the export keeps the pipeline, not 180 MB of pixels

    def __getstate__(self): return {**self.__dict__, 'images': None} if ArrayImage.exporting else self.__dict__


class ArrayLabel(Transform):
    "Class name of item `i` from the in-memory integer `labels`"
    def __init__(self, labels: np.ndarray | None = None, classes=()): self.labels, self.classes = labels, list(classes)
    def encodes(self, i: int) -> str: return self.classes[self.labels[i]]
    def __getstate__(self): return {**self.__dict__, 'labels': None} if ArrayImage.exporting else self.__dict__


def _arrays(dataset) -> tuple | None:
    "(images, labels, code of each label, items) of a `Datasets` whose items index `ArrayImage` and `ArrayLabel`"
    tls = getattr(dataset, 'tls', None)  # None for any other dataset, e.g. fastai's `test_dl` of image files
    if tls is None or len(tls) != 2: return None
    (image, *more), label = tls[0].tfms.fs, tls[1].tfms.fs
    if more or not isinstance(image, ArrayImage) or image.images is None: return None
    if len(label) != 2 or not isinstance(label[0], ArrayLabel) or not isinstance(label[1], Categorize): return None
    codes = np.array([label[1].vocab.o2i[c] for c in label[0].classes])  # what `Categorize` makes of each class
    return image.images, label[0].labels, codes, tls[0].items


class AsyncCopy:
    "Mixin for a fastai `DataLoader`: batches go to its device with `non_blocking=True`, from pinned memory if it pins"
    def __iter__(self):
        # fastai's `DataLoader.__iter__` but for the copy, where its `to_device` waits for each batch to arrive
        # (https://github.com/fastai/fastai/blob/master/fastai/data/load.py)
        self.randomize()
        self.before_iter()
        self._DataLoader__idxs = self.get_idxs()  # the order `DataLoader.sample` deals out, here and to the workers
        for b in _loaders[self.fake_l.num_workers == 0](self.fake_l):
            if isinstance(b, list): b = tuple(b)  # pinning makes the tuple a list
            yield self.after_batch(b if self.device is None else to_device(b, self.device, non_blocking=True))
        self.after_iter()
        if hasattr(self, 'it'): del self.it


class ArrayDL(AsyncCopy, TfmdDL):
    "A `TfmdDL` that makes a batch of in-memory images in one call, and gives each loader worker its own augmentations"
    # Over the `Datasets` of `cifar_dls` a batch is gathered from the arrays and augmented by the same
    # `AlbumentationsTransform` that fastai calls item by item; other datasets and item transforms go item by item.
    def create_batches(self, samps):
        arrays = _arrays(self.dataset) if self.bs is not None and not self.before_batch.fs else None
        if arrays is None or len(self._augs()) != len(self.after_item.fs): return super().create_batches(samps)
        return (self.array_batch(idxs, *arrays) for idxs in chunked(samps, self.bs, drop_last=self.drop_last))

    def array_batch(self, idxs: list, images: np.ndarray, labels: np.ndarray, codes: np.ndarray, items) -> tuple:
        "The batch of dataset positions `idxs`: (B, 3, H, W) uint8 images and their class codes"
        rows = [items[i] for i in idxs]  # rows of the arrays
        x = images[rows]
        for t in self._augs(): x = t.augment(x, self._split_idx, rows)
        # (B, 3, H, W) over (B, H, W, 3) memory is channels_last, the layout the model computes in by default
        x = TensorImage(torch.from_numpy(x).permute(0, 3, 1, 2))
        return x, TensorCategory(torch.from_numpy(codes[labels[rows]]))

    def before_iter(self):
        super().before_iter()
        # a worker process holds copies of the pipelines, which the parent's never follow: each epoch the parent's
        # draw the workers' seeds, so that workers draw apart, anew each epoch, from the states a checkpoint saves
        self.worker_seeds = [t.draw_seed(self._split_idx) for t in self._augs()] if self.fake_l.num_workers else []

    def wif(self):
        "In a loader worker: seed its copies of the pipelines from this epoch's seeds and the worker's id"
        for t, seed in zip(self._augs(), self.worker_seeds):
            if seed is not None: t.seed_copy(self._split_idx, seed, get_worker_info().id)

    def _augs(self) -> list: return [t for t in self.after_item.fs if isinstance(t, AlbumentationsTransform)]

    @property
    def _split_idx(self) -> int | None: return getattr(self.dataset, 'split_idx', None)


def default_workers(device: torch.device) -> int:
    "Loader processes: none on CPU, where they compete with the model for cores; a few beside a GPU"
    return 0 if device.type == 'cpu' else min(8, os.cpu_count() or 1)


def holdout_split(labels: np.ndarray, valid_pct: float, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    "Indices (train, valid) of `labels`, with `valid_pct` of each class held out at random, fixed by `seed`"
    within('`valid_pct` (the share of training images held out)', valid_pct)
    classes, counts = np.unique(labels, return_counts=True)
    # the smallest class holds out the fewest: if it holds out none, the share is too small
    if valid_pct and len(counts) and not round(valid_pct * counts.min()):
        raise ConfigError(f"--valid-pct {valid_pct:g} holds out no image of class {classes[counts.argmin()]}, "
                          f"which has {counts.min()}: give at least {1 / counts.min():.2g}, or 0 to validate on the "
                          "test split")
    rng, valid = np.random.default_rng(0 if seed is None else seed), []
    for c in classes:
        members = np.flatnonzero(labels == c)
        valid.append(rng.permutation(members)[:round(valid_pct * len(members))])
    valid = np.sort(np.concatenate(valid)) if valid else np.zeros(0, np.int64)
    return np.setdiff1d(np.arange(len(labels)), valid), valid


def ds_idx_of_test(dls: DataLoaders) -> int:
    "Which loader of `dls` holds the test split: 2 when a validation split was held out of train, else 1"
    return 2 if len(dls.loaders) > 2 else 1


def cifar_dls(source=None, bs: int = 64, augs='default', valid_augs=None, seed: int | None = None,
              num_workers: int | None = None, device=None, val_bs: int | None = None, progress: bool = True,
              valid_pct: float = 0., alternate_flip: bool = False, **kwargs) -> DataLoaders:
    "CIFAR-10 `DataLoaders` from `source` (a path, 'sample', 'cifar10', a `Cifar10` or None to search)"
    # valid_pct > 0: that share of each class of train is the validation set and the test split a third loader
    # (`dls[2]`, see `ds_idx_of_test`); 0: the test split is the validation set, as the reports and fastai's examples
    # alternate_flip: mirror training images by `AlternatingFlip` too (give `augs` without a flip of their own)
    whole('`bs`', bs)
    data = source if isinstance(source, Cifar10) else read_cifar10(source, progress=progress)  # progress: decoding bar
    device = torch.device(device) if device is not None else default_device()
    if seed is not None: set_seed(seed)
    n_train, n_test = len(data.train_y), len(data.test_y)
    images = np.concatenate([data.train_x, data.test_x])
    labels = np.concatenate([data.train_y, data.test_y])
    train, valid = holdout_split(data.train_y, valid_pct, seed)
    if len(train) < bs:  # fastai drops the last, partial batch of training: no batch at all would be left
        raise ConfigError(f"--bs {bs} is more than the {len(train)} images to train on: an epoch would train on "
                          f"nothing; give --bs {len(train)} or less")
    test = list(range(n_train, n_train + n_test))
    splits = (train.tolist(), valid.tolist(), test) if valid_pct else (train.tolist(), test)
    tfms = [[ArrayImage(images)], [ArrayLabel(labels, data.classes), Categorize(vocab=data.classes, sort=False)]]
    dsets = Datasets(list(range(n_train + n_test)), tfms, splits=splits)
    augs = cifar_augs(flip=not alternate_flip) if augs == 'default' else augs
    aug = AlbumentationsTransform(augs, valid_augs, seed, alternate_flip)
    stats = [torch.tensor(s, device=device).view(1, 3, 1, 1) for s in (CIFAR10_MEAN, CIFAR10_STD)]
    workers = default_workers(device) if num_workers is None else num_workers
    kwargs = {'pin_memory': device.type == 'cuda', **kwargs}  # pinned batches copy to the GPU without waiting
    dls = dsets.dataloaders(bs=bs, val_bs=val_bs or 2 * bs, after_item=[aug], device=device, num_workers=workers,
                            dl_type=ArrayDL, after_batch=[IntToFloatTensor(), Normalize(*stats)], **kwargs)
    dls.data = data  # the arrays and class names, for interpretation
    return dls
