"The Albumentations wrapper: training items change, test items do not, and a seed repeats a batch"
import albumentations as A
import numpy as np
import pytest
import torch
from fastai.torch_core import TensorImage
from fastai.vision.core import PILImage

from cifar_fastai.errors import ConfigError
from cifar_fastai.transforms import CIFAR10_MEAN, AlbumentationsTransform, AlternatingFlip, cifar_augs

TRAIN, VALID = 0, 1


def _image(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def _tensor(arr): return TensorImage(torch.from_numpy(arr).permute(2, 0, 1))


def test_training_items_are_augmented_and_test_items_are_untouched():
    tfm, img = AlbumentationsTransform(cifar_augs(cutout_p=1.0), seed=0), _image()
    train = tfm(_tensor(img), split_idx=TRAIN)
    assert isinstance(train, TensorImage) and train.shape == (3, 32, 32) and train.dtype == torch.uint8
    assert not torch.equal(train, _tensor(img))
    for _ in range(3): assert torch.equal(tfm(_tensor(img), split_idx=VALID), _tensor(img))


def test_valid_items_get_their_own_pipeline():
    tfm = AlbumentationsTransform(None, A.HorizontalFlip(p=1.0))
    img = _image()
    assert torch.equal(tfm(_tensor(img), split_idx=VALID), _tensor(img[:, ::-1].copy()))
    assert torch.equal(tfm(_tensor(img), split_idx=TRAIN), _tensor(img))


def test_pil_images_stay_pil_images():
    out = AlbumentationsTransform([A.HorizontalFlip(p=1.0)])(PILImage.create(_image()), split_idx=TRAIN)
    assert isinstance(out, PILImage) and np.array_equal(np.asarray(out), _image()[:, ::-1])


def test_the_same_seed_gives_the_same_augmented_items():
    imgs = [_tensor(_image(i)) for i in range(8)]
    runs = [[AlbumentationsTransform(cifar_augs(), seed=s)(x, split_idx=TRAIN) for x in imgs] for s in (7, 7, 8)]
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], runs[2]))


def test_seeded_transforms_draw_independently():
    # flip and cutout both fire with p=0.5: with one shared seed they would always fire together
    tfm = AlbumentationsTransform(cifar_augs(pad=0, cutout_p=0.5), seed=0)
    img, both = np.full((32, 32, 3), 7, np.uint8), []
    img[:, :16] = 200  # a flip moves the bright half, a cutout paints the mean colour
    fills = np.array([round(255 * m) for m in CIFAR10_MEAN], np.uint8)
    for _ in range(40):
        out = tfm(_tensor(img), split_idx=TRAIN).permute(1, 2, 0).numpy()
        both.append(((out == fills).all(-1).sum() == 256, out[:, 16:][(out[:, 16:] != fills).any(-1)].max() == 200))
    assert len(set(both)) == 4  # all four (cutout?, flipped?) combinations occur


def test_cutout_is_one_16x16_hole_of_the_mean_colour():
    tfm = AlbumentationsTransform(cifar_augs(pad=0, flip=False, cutout_p=1.0), seed=1)
    out = tfm(_tensor(np.zeros((32, 32, 3), np.uint8)), split_idx=TRAIN).permute(1, 2, 0).numpy()
    filled = (out != 0).all(-1)
    rows, cols = np.nonzero(filled)
    assert filled.sum() == 256 and np.ptp(rows) == 15 and np.ptp(cols) == 15
    assert tuple(out[rows[0], cols[0]]) == tuple(round(255 * m) for m in CIFAR10_MEAN)


@pytest.mark.parametrize('kwargs,names', [
    (dict(), ['HorizontalFlip', 'CoarseDropout']),  # the reports': flip and cutout (normalising is a batch transform)
    (dict(pad=4), ['PadIfNeeded', 'RandomCrop', 'HorizontalFlip', 'CoarseDropout']),
    (dict(pad=4, flip=False, cutout=0), ['PadIfNeeded', 'RandomCrop']),
    (dict(flip=False, cutout=0), [])])
def test_each_part_of_the_pipeline_can_be_switched_on_or_off(kwargs, names):
    assert [type(t).__name__ for t in cifar_augs(**kwargs).transforms] == names


def test_a_cutout_as_large_as_the_image_covers_it_all():
    tfm = AlbumentationsTransform(cifar_augs(flip=False, cutout=32, cutout_p=1.0), seed=0)
    out = tfm(_tensor(np.zeros((32, 32, 3), np.uint8)), split_idx=TRAIN).permute(1, 2, 0).numpy()
    assert (out == np.array([round(255 * m) for m in CIFAR10_MEAN])).all()


@pytest.mark.parametrize('kwargs', [dict(pad=-1), dict(cutout=2.5), dict(cutout=33), dict(cutout_p=1.5)])
def test_bad_pipeline_arguments_are_named(kwargs):
    with pytest.raises(ValueError, match=list(kwargs)[0]): cifar_augs(**kwargs)


def _views(flip: AlternatingFlip, images: np.ndarray, rows, epoch: int) -> np.ndarray:
    "Whether each of `images` (rows `rows`) comes out of `flip` mirrored in `epoch`, checked pixel for pixel"
    flip.epoch = epoch
    out = flip(images, rows)
    mirrored = np.array([np.array_equal(o, img[:, ::-1]) for o, img in zip(out, images)])
    plain = np.array([np.array_equal(o, img) for o, img in zip(out, images)])
    assert (mirrored ^ plain).all()  # each image comes out whole, one way or the other
    return mirrored


def test_alternating_flip_shows_each_image_both_ways_in_any_two_epochs_in_a_row():
    images = np.random.default_rng(0).integers(0, 256, (2000, 8, 8, 3), dtype=np.uint8)
    rows = np.arange(2000)
    first, second, third = (_views(AlternatingFlip(seed=3), images, rows, e) for e in range(3))
    assert (second == ~first).all() and (third == first).all()
    assert 0.45 < first.mean() < 0.55  # a random half: 2000 fair coins (std 0.011)
    other_seed = _views(AlternatingFlip(seed=4), images, rows, 0)
    assert 0.4 < (other_seed == first).mean() < 0.6  # another seed, other coins


def test_an_images_flip_depends_on_its_row_not_on_its_batch():
    images = np.random.default_rng(1).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    flip = AlternatingFlip(seed=5)
    alone = [_views(flip, images[i:i + 1], [10 * i], 1)[0] for i in range(6)]  # the coins grow as rows come
    together = _views(AlternatingFlip(seed=5), images[::-1], [50, 40, 30, 20, 10, 0], 1)[::-1]
    assert alone == together.tolist()


def test_alternating_flips_act_on_training_batches_only_and_refuse_single_items():
    tfm, images = AlbumentationsTransform(None, alternate_flip=True, seed=0), _image()[None].repeat(64, 0)
    flipped = tfm.augment(images, TRAIN, rows=np.arange(64))
    assert 0 < sum(np.array_equal(o, images[0][:, ::-1]) for o in flipped) < 64
    assert np.array_equal(tfm.augment(images, VALID), images)
    with pytest.raises(ValueError, match='rows'): tfm.augment(images, TRAIN)
    with pytest.raises(ConfigError, match='alternating flips need'): tfm(_tensor(_image()), split_idx=TRAIN)
    assert torch.equal(tfm(_tensor(_image()), split_idx=VALID), _tensor(_image()))
