"A split held out of train (`valid_pct`): disjoint, stratified, seeded; the plateau reads it, test is recorded"
import numpy as np
import pytest
import torch

from cifar_fastai.errors import ConfigError
from cifar_fastai.learner import cifar_learner
from cifar_fastai.loaders import cifar_dls, holdout_split, ds_idx_of_test
from tests.helpers import synthetic_cifar


@pytest.mark.parametrize('valid_pct, n_per_class', [(0.1, 5), (0.25, 12), (0.5, 25)])
def test_holdout_is_disjoint_stratified_and_complete(valid_pct, n_per_class):
    labels = np.repeat(np.arange(10), 50)[np.random.default_rng(3).permutation(500)]
    train, valid = holdout_split(labels, valid_pct, seed=0)
    assert len(np.intersect1d(train, valid)) == 0 and sorted(np.concatenate([train, valid])) == list(range(500))
    assert np.bincount(labels[valid], minlength=10).tolist() == [n_per_class] * 10


def test_holdout_is_fixed_by_the_seed():
    labels = np.repeat(np.arange(10), 20)
    same = [holdout_split(labels, 0.2, seed=7)[1] for _ in range(2)]
    other = holdout_split(labels, 0.2, seed=8)[1]
    assert np.array_equal(*same) and not np.array_equal(same[0], other)


@pytest.mark.parametrize('valid_pct', [-0.1, 1.0, 1.5])
def test_holdout_share_out_of_range_is_named(valid_pct):
    with pytest.raises(ValueError, match='valid_pct'): holdout_split(np.arange(10), valid_pct)


def test_a_share_too_small_to_hold_out_an_image_of_each_class_names_the_smallest_class_and_a_share_that_works():
    labels = np.concatenate([np.repeat(np.arange(10), 50), np.full(50, 3)])  # class 3 has 100 images, the rest 50
    with pytest.raises(ConfigError, match=r'^--valid-pct 0.01 holds out no image of class 0, which has 50: give at '
                                          r'least 0.02'): holdout_split(labels, 0.01)
    labels = np.concatenate([np.repeat(np.arange(10), 100)[100:], np.full(25, 0)])  # class 0: 25 images, the rest 100
    with pytest.raises(ConfigError, match=r'holds out no image of class 0, which has 25: give at least 0.04'):
        holdout_split(labels, 0.015)  # 1.5 of a class of 100, 0.4 of class 0
    assert np.bincount(labels[holdout_split(labels, 0.04)[1]]).tolist() == [1] + [4] * 9


def test_loaders_hold_train_valid_and_test_apart():
    data = synthetic_cifar(200, 40)
    dls = cifar_dls(data, bs=16, seed=0, valid_pct=0.2)
    items = [set(dl.dataset.items) for dl in dls.loaders]
    # classes of 24, 14, 12, 20, 19, 19, 21, 23, 24, 24 images hold out a fifth of each, rounded: 5, 3, 2, 4, 4, 4, 4,
    # 5, 5, 5, so 41 in all, not a fifth of the 200
    assert np.bincount(data.train_y).tolist() == [24, 14, 12, 20, 19, 19, 21, 23, 24, 24]
    assert ds_idx_of_test(dls) == 2 and [len(i) for i in items] == [159, 41, 40]
    assert not (items[0] & items[1]) and not (items[0] | items[1]) & items[2]
    assert items[2] == set(range(200, 240))  # the test split, unchanged
    assert ds_idx_of_test(cifar_dls(data, bs=16, seed=0)) == 1


class Spy(torch.nn.Module):
    "Records how many images each forward pass sees in eval mode"
    def __init__(self, model): super().__init__(); self.model, self.eval_sizes = model, []
    def forward(self, x):
        if not self.training: self.eval_sizes.append(len(x))
        return self.model(x)


def test_plateau_reads_the_held_out_loss_and_the_record_has_both_splits():
    dls = cifar_dls(synthetic_cifar(200, 30), bs=20, seed=0, valid_pct=0.2)
    learn = cifar_learner(dls, precision='fp32')
    learn.fit(2, 0.01)
    fastai = [dict(zip(learn.recorder.metric_names[1:], values)) for values in learn.recorder.values]
    row = learn.epoch_record.rows[-1]
    assert row['valid_loss'] == pytest.approx(fastai[-1]['valid_loss'], rel=1e-5)
    assert row['valid_accuracy'] == pytest.approx(fastai[-1]['valid_accuracy'])
    assert learn.reduce_lr_on_plateau.best == pytest.approx(min(f['valid_loss'] for f in fastai), rel=1e-6)
    test_loss, test_accuracy = learn.validate(ds_idx=2)
    assert row['test_loss'] == pytest.approx(test_loss, rel=1e-5)
    assert row['test_accuracy'] == pytest.approx(test_accuracy)
    assert row['test_loss'] != pytest.approx(row['valid_loss'], rel=1e-3)


def test_test_pass_sees_the_weight_average_and_the_whole_test_split():
    dls = cifar_dls(synthetic_cifar(100, 30), bs=20, seed=0, valid_pct=0.2)
    learn = cifar_learner(dls, precision='fp32', ema=0.9)
    learn.model = Spy(learn.model)
    learn.fit(1, 0.01)
    assert learn.model.eval_sizes == [len(dls.valid_ds), 30]  # the held-out images in one batch, then the 30 test
    # after the fit the model holds the average: testing it again gives the epoch's test figures
    assert learn.validate(ds_idx=2)[0] == pytest.approx(learn.epoch_record.rows[-1]['test_loss'], rel=1e-5)
