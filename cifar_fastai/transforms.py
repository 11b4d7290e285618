"Albumentations pipelines as a fastai item transform (or a batch at a time), and the default CIFAR-10 augmentation"
from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from fastai.vision.core import PILImage
from fastai.torch_core import TensorImage
from fastcore.basics import store_attr
from fasttransform import Transform

from cifar_fastai.checks import IMAGE_SIZE, whole, within
from cifar_fastai.errors import ConfigError

__all__ = ['CIFAR10_MEAN', 'CIFAR10_STD', 'AlbumentationsTransform', 'AlternatingFlip', 'cifar_augs']

# Per-channel mean and std of the 50,000 CIFAR-10 training images, pixels scaled to [0, 1]
# (computed over the official arrays; 0.2470/0.2435/0.2616 is the pixel std, not the
# 0.2023/0.1994/0.2010 that many CIFAR repositories copy).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def cifar_augs(pad: int = 0, flip: bool = True, cutout: int = 16, cutout_p: float = 0.5,
               fill: Sequence[int] | None = None) -> A.Compose:
    "The reports' training pipeline, horizontal flip and a `cutout`x`cutout` hole; `pad` > 0 adds a reflect-pad crop"
    whole('`pad`', pad, low=0)
    whole('`cutout` (a side in pixels)', cutout, low=0, high=IMAGE_SIZE)
    within('`cutout_p` (a probability)', cutout_p, high_open=False)
    fill = tuple(round(255 * m) for m in CIFAR10_MEAN) if fill is None else tuple(fill)  # a hole normalises to ~0
    tfms = []
    if pad:
        side = 32 + 2 * pad
        tfms += [A.PadIfNeeded(side, side, border_mode=cv2.BORDER_REFLECT_101), A.RandomCrop(32, 32)]
    if flip: tfms.append(A.HorizontalFlip(p=0.5))
    if cutout: tfms.append(A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(cutout, cutout),
                                           hole_width_range=(cutout, cutout), fill=fill, p=cutout_p))
    return A.Compose(tfms)


def _as_compose(aug) -> A.Compose | None:
    if aug is None or isinstance(aug, A.Compose): return aug
    if isinstance(aug, A.BasicTransform): return A.Compose([aug])
    if isinstance(aug, Sequence): return A.Compose(list(aug))
    raise TypeError(f"Expected an albumentations Compose, transform or list of transforms, got {type(aug).__name__}")


def _walk(aug):
    yield aug
    for t in getattr(aug, 'transforms', []): yield from _walk(t)


def _seed_each(aug, seed: int | list[int]):
    "Seed every transform of `aug` with its own stream, parents before children; `seed` is a number or a list of them"
    # `Compose.set_random_seed` gives every child the same seed, so a flip and a cutout with the same `p` would
    # always fire together; pre-order seeding lets each child overwrite what its parent handed down.
    parts = list(_walk(aug))
    for t, s in zip(parts, np.random.SeedSequence(seed).generate_state(len(parts))): t.set_random_seed(int(s))


class AlternatingFlip:
    "Mirror training image `row` in epoch `epoch` if its coin, fixed by `seed`, came up heads, in odd epochs if not"
    # Jordan's derandomised flip (arXiv 2404.00498, section 3.6): the first epoch flips a random half, every later
    # epoch the images the one before left as they were, so two epochs in a row show each image both ways
    def __init__(self, seed: int | None = None):
        self.seed = int(np.random.SeedSequence().entropy % 2**63) if seed is None else seed
        self.epoch, self._coins = 0, np.zeros(0, bool)

    def flips(self, rows) -> np.ndarray:
        "Whether each of `rows` (indices into the images) is mirrored in the current epoch"
        rows = np.asarray(rows, np.int64)
        if rows.size and rows.max() >= len(self._coins):  # grown by prefixes: one row's coin never changes
            self._coins = np.random.default_rng([self.seed, 0xF11B]).random(2 * int(rows.max()) + 1) < 0.5
        return self._coins[rows] ^ bool(self.epoch % 2)

    def __call__(self, images: np.ndarray, rows) -> np.ndarray:
        "Of a (B, H, W, C) batch of `rows`, a copy with this epoch's images mirrored left to right"
        flip = self.flips(rows)
        return np.where(flip[:, None, None, None], images[:, :, ::-1], images)


class AlbumentationsTransform(Transform):
    "Apply `train_aug` to training items and `valid_aug` (default: nothing) to the rest"
    split_idx, order = None, 2  # after the item is an image, before `ToTensor`

    def __init__(self, train_aug=None, valid_aug=None, seed: int | None = None, alternate_flip: bool = False):
        # alternate_flip: training batches are also mirrored by an `AlternatingFlip`, which needs the batch path
        super().__init__()
        store_attr('seed')
        self.train_aug, self.valid_aug = _as_compose(train_aug), _as_compose(valid_aug)
        self.rank = 0  # the data-parallel process whose streams the generators hold
        self.alternate = AlternatingFlip(seed) if alternate_flip else None
        if seed is not None: self.set_seed(seed)

    def set_epoch(self, epoch: int):
        "Tell the alternating flip (if any) which epoch the next training batches belong to"
        if self.alternate is not None: self.alternate.epoch = epoch

    def set_seed(self, seed: int, rank: int = 0):
        "Make the augmentations repeatable: the same `seed` gives the same augmented items; each `rank` its own"
        # the train pipeline takes seed + 2 rank, the test one seed + 2 rank + 1: no two streams are the same
        for i, aug in enumerate((self.train_aug, self.valid_aug)):
            if aug is not None: _seed_each(aug, seed + 2 * rank + i)
        self.rank = rank

    def restored_for(self, rank: int):
        "Record that the generators now hold process `rank`'s streams, put back from a checkpoint, not seeded afresh"
        self.rank = rank

    def generators(self) -> list:
        "Every random generator of the pipelines, for saving and restoring their states"
        return [g for aug in (self.train_aug, self.valid_aug) if aug is not None for t in _walk(aug)
                for g in (t.random_generator, t.py_random)]

    def pipeline(self, split_idx: int | None) -> A.Compose | None:
        "The pipeline of split `split_idx`: `train_aug` for training items (0), `valid_aug` for the rest"
        return self.train_aug if split_idx == 0 else self.valid_aug

    def augment(self, images: np.ndarray, split_idx: int | None, rows=None) -> np.ndarray:
        "A (B, H, W, C) uint8 batch of `rows` through the pipeline of split `split_idx`, image by image as items go"
        aug = self.pipeline(split_idx)
        out = images if aug is None else np.stack([aug(image=img)['image'] for img in images])
        if split_idx != 0 or self.alternate is None: return out
        if rows is None:
            raise ValueError("alternating flips need the batch's `rows`, which image each one is")
        return self.alternate(out, rows)

    def draw_seed(self, split_idx: int | None) -> int | None:
        "A seed drawn from the pipeline of split `split_idx` (None if it has none), for a copy to draw apart from it"
        aug = self.pipeline(split_idx)
        return None if aug is None else int(aug.random_generator.integers(2**63))

    def seed_copy(self, split_idx: int | None, *keys: int):
        "Seed the pipeline of split `split_idx` from `keys`, e.g. (a seed from `draw_seed`, a loader worker's id)"
        if (aug := self.pipeline(split_idx)) is not None: _seed_each(aug, list(keys))

    def __call__(self, b, split_idx=None, **kwargs):
        self.idx = split_idx
        return super().__call__(b, split_idx=None, **kwargs)

    def _augment(self, arr: np.ndarray) -> np.ndarray:
        if self.idx == 0 and self.alternate is not None:
            raise ConfigError("alternating flips need to know which image each one is, which only the in-memory "
                              "batches of `cifar_dls` tell: use its loaders, or random flips (--flip)")
        aug = self.pipeline(self.idx)
        return arr if aug is None else aug(image=arr)['image']

    def encodes(self, img: PILImage) -> PILImage:
        return PILImage.create(self._augment(np.asarray(img)))

    def encodes(self, img: TensorImage) -> TensorImage:  # (3, H, W) uint8, as the in-memory data path yields
        out = self._augment(np.ascontiguousarray(img.permute(1, 2, 0).numpy()))
        return TensorImage(torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1))
