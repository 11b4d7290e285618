"The batch path makes what fastai's item-by-item path makes: the same pixels and labels, the same augmentations"
import numpy as np
import pytest
import torch
from fastai.data.core import TfmdDL
from fastai.callback.core import Callback
from fastai.learner import load_learner
from torch import nn

from cifar_fastai import loaders
from cifar_fastai.checkpoint import SkipEpochs
from cifar_fastai.data import Cifar10
from cifar_fastai.errors import ConfigError
from cifar_fastai.learner import cifar_learner
from cifar_fastai.loaders import ArrayDL, cifar_dls
from cifar_fastai.transforms import CIFAR10_MEAN, CIFAR10_STD, cifar_augs
from tests.helpers import CLASSES, synthetic_cifar

PAD = 4


def _item_path(dl, **kwargs) -> TfmdDL:
    "fastai's own `TfmdDL` over the same dataset and transforms, shuffling as `dl` would next"
    ref = dl.new(cls=TfmdDL, **kwargs)
    ref.rng.setstate(dl.rng.getstate())
    return ref


def _batches(dl) -> list: return [tuple(t.as_subclass(torch.Tensor) for t in b) for b in dl]


@pytest.mark.parametrize('valid_pct', [0., 0.25])
def test_without_augmentation_every_loader_gives_fastais_pixels_and_labels(valid_pct):
    dls = cifar_dls(synthetic_cifar(80, 24), bs=16, augs=None, seed=0, device='cpu', valid_pct=valid_pct)
    assert all(type(dl) is ArrayDL for dl in dls.loaders)
    for dl in dls.loaders:  # train shuffled and dropping its last batch, the others neither
        expected = _batches(_item_path(dl))
        got = _batches(dl)
        assert len(got) == len(expected) == len(dl) and sum(len(y) for _, y in got) > 0
        for (x, y), (ex, ey) in zip(got, expected):
            assert x.dtype == torch.float32 and torch.equal(x, ex) and torch.equal(y, ey)


def test_the_batch_path_draws_the_augmentations_of_the_item_path_from_the_same_states():
    data = synthetic_cifar(64, 16)
    ours, theirs = (cifar_dls(data, bs=16, augs=cifar_augs(pad=PAD), seed=0, device='cpu') for _ in range(2))
    ref = _item_path(theirs.train)
    for _ in range(2):  # two epochs: the states move on alike
        for (x, y), (ex, ey) in zip(_batches(ours.train), _batches(ref), strict=True):
            assert torch.equal(x, ex) and torch.equal(y, ey)


def _coordinates(n: int) -> Cifar10:
    "`n` copies of one picture whose pixels tell where they came from: red 7 x row, green 7 x column, blue 255"
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing='ij')
    img = np.stack([7 * rows, 7 * cols, np.full_like(rows, 255)], -1).astype(np.uint8)
    x = np.repeat(img[None], n, 0)
    return Cifar10(x, np.zeros(n, np.int64), x[:1].copy(), np.zeros(1, np.int64), CLASSES, 'coordinates')


def _measure(img: np.ndarray) -> tuple:
    "(flipped, crop row, crop column, hole top, hole left) of an augmented `_coordinates` picture; -1s: no hole"
    hole = img[..., 2] != 255  # the hole's fill has blue 114
    r, c = np.flatnonzero(~hole.any(1))[0], np.flatnonzero(~hole.any(0))[0]  # a row and a column it spares
    left, right = int(img[r, 8, 1]) // 7, int(img[r, 24, 1]) // 7
    flipped = left > right
    dx = left - (31 - 8 if flipped else 8) + PAD  # output column 8 is cropped column 23 after a flip
    dy = int(img[8, c, 0]) // 7 - 8 + PAD
    top, first = np.argwhere(hole).min(0) if hole.any() else (-1, -1)
    return flipped, dy, dx, top, first


def _statistics(dl) -> dict:
    "Frequencies of flips, crop offsets and holes over one epoch of `dl`, and how they go together"
    images = torch.cat([x for x, _ in dl]).permute(0, 2, 3, 1).numpy()
    flipped, dy, dx, top, left = np.array([_measure(img) for img in images]).T
    holed = top >= 0
    stats = {'flip': flipped.mean(), 'hole': holed.mean(), 'flip and hole': (flipped & holed).mean(),
             'neighbours flip alike': (flipped[1:] == flipped[:-1]).mean(),
             'hole top / 16': top[holed].mean() / 16, 'hole left / 16': left[holed].mean() / 16}
    for offset in range(2 * PAD + 1):
        stats |= {f'crop row {offset}': (dy == offset).mean(), f'crop column {offset}': (dx == offset).mean()}
    return stats


def test_flips_crops_and_holes_have_the_distribution_of_the_item_path():
    # cifar_augs(pad=4): a crop at 9 x 9 equally likely offsets, a flip with p 0.5, a 16x16 hole with p 0.5 anywhere
    # it fits, each drawn on its own for each image; 2048 draws: 4.5 standard deviations are within 0.05
    data, n = _coordinates(2048), 2048
    ours = cifar_dls(data, bs=256, augs=cifar_augs(pad=PAD), seed=1, shuffle=False, device='cpu').train
    theirs = cifar_dls(data, bs=256, augs=cifar_augs(pad=PAD), seed=2, shuffle=False, device='cpu').train
    expected = {'flip': 0.5, 'hole': 0.5, 'flip and hole': 0.25, 'neighbours flip alike': 0.5,
                'hole top / 16': 0.5, 'hole left / 16': 0.5}
    expected |= {f'crop {axis} {o}': 1 / 9 for axis in ('row', 'column') for o in range(2 * PAD + 1)}
    batch, item = _statistics(ours.new(after_batch=[])), _statistics(_item_path(theirs, after_batch=[]))
    assert set(batch) == set(item) == set(expected)
    for key, p in expected.items():
        tolerance = 4.5 * np.sqrt(p * (1 - p) / n) if 'hole ' not in key else 0.05  # hole means: 4.5 sd = 0.043
        assert abs(batch[key] - p) < tolerance and abs(item[key] - p) < tolerance, (key, batch[key], item[key])
        assert abs(batch[key] - item[key]) < np.sqrt(2) * tolerance, key


def _tiny_model():
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))


def test_show_batch_one_batch_predict_and_export_still_work(tmp_path):
    import matplotlib.pyplot as plt
    data = synthetic_cifar(32, 8)
    dls = cifar_dls(data, bs=8, seed=0, device='cpu')
    x, y = dls.one_batch()
    assert type(x).__name__ == 'TensorImage' and x.shape == (8, 3, 32, 32) and y.shape == (8,)
    assert abs(float(x.mean())) < 3 and set(y.tolist()) <= set(range(10))
    plt.close('all')
    dls.show_batch(max_n=4)
    titles = [ax.get_title() for i in plt.get_fignums() for ax in plt.figure(i).axes]
    assert len(titles) == 4 and set(titles) <= set(CLASSES)  # each image titled with its class
    plt.close('all')
    learn = cifar_learner(dls, model=_tiny_model(), precision='fp32', channels_last=False)
    label, index, probs = learn.predict(data.test_x[0])
    assert label == CLASSES[int(index)] and probs.shape == (10,)
    learn.export(tmp_path / 'export.pkl')
    again = load_learner(tmp_path / 'export.pkl').predict(data.test_x[0])
    assert again[0] == label and torch.allclose(again[2], probs)


def test_batches_reach_the_loaders_device_by_non_blocking_copies(monkeypatch):
    # a `meta` device stands in for a GPU: the copy must ask not to wait, from memory that `pin_memory` pins on CUDA
    seen = []
    def to_device(b, device, non_blocking=False):
        seen.append(non_blocking)
        return tuple(t.to(device) for t in b)
    monkeypatch.setattr(loaders, 'to_device', to_device)
    dls = cifar_dls(synthetic_cifar(32, 8), bs=8, seed=0, device='meta')
    batches = list(dls.train)
    assert len(batches) == 4 and seen == [True] * 4
    assert all(t.device.type == 'meta' for b in batches for t in b)
    assert not dls.train.pin_memory  # pinned only for CUDA


def test_a_hole_is_the_mean_colour_in_the_batch_path_too():
    data = _coordinates(16)
    dl = cifar_dls(data, bs=16, augs=cifar_augs(flip=False, cutout_p=1.), seed=0, device='cpu').train
    images = next(iter(dl.new(after_batch=[])))[0].permute(0, 2, 3, 1).numpy()
    fill = np.array([round(255 * m) for m in CIFAR10_MEAN])
    assert all(((img == fill).all(-1)).sum() == 256 for img in images)


def test_a_batch_larger_than_the_training_images_is_refused_naming_both():
    with pytest.raises(ConfigError, match=r'^--bs 64 is more than the 48 images to train on: .* --bs 48 or less$'):
        cifar_dls(synthetic_cifar(n_train=60, n_test=8), bs=64, valid_pct=0.2, device='cpu')  # 12 held out
    assert len(cifar_dls(synthetic_cifar(n_train=48, n_test=8), bs=48, device='cpu').train) == 1


class _Shown(Callback):
    "Record, epoch by epoch, which training rows a fit showed mirrored, by matching each input to the originals"
    def __init__(self, images: np.ndarray):
        mean, std = (np.array(s, np.float32) for s in (CIFAR10_MEAN, CIFAR10_STD))
        self.mean, self.std, self.seen = mean, std, {}
        self.index = {img.tobytes(): (row, False) for row, img in enumerate(images)}
        self.index.update({img[:, ::-1].tobytes(): (row, True) for row, img in enumerate(images)})

    def before_batch(self):
        if not self.training: return
        x = self.xb[0].as_subclass(torch.Tensor).permute(0, 2, 3, 1).cpu().numpy()
        pixels = np.rint(255 * (x * self.std + self.mean)).astype(np.uint8)
        self.seen.setdefault(self.epoch, {}).update(self.index[img.tobytes()] for img in pixels)


def _fit_showing(data, epochs: int, skip: int = 0) -> dict:
    dls = cifar_dls(data, bs=8, augs=None, seed=3, device='cpu', alternate_flip=True)
    shown = _Shown(data.train_x)
    learn = cifar_learner(dls, model=_tiny_model(), precision='fp32', channels_last=False)
    learn.fit(epochs, 0.01, cbs=[shown, SkipEpochs(skip)])
    return shown.seen


def test_a_fit_shows_every_training_image_mirrored_every_other_epoch_and_a_resumed_one_goes_on_alike():
    data = synthetic_cifar(64, 8)
    seen = _fit_showing(data, 3)
    assert [len(seen[e]) for e in range(3)] == [64] * 3  # no partial batch dropped: every image every epoch
    assert 16 < sum(seen[0].values()) < 48
    assert all(seen[1][row] != seen[0][row] and seen[2][row] == seen[0][row] for row in range(64))
    assert _fit_showing(data, 3, skip=2) == {2: seen[2]}  # epoch 3 after a resume from the end of epoch 2
