"The weight average: the hand-computed EMA of every step, tested in place of the live weights, kept at the end"
import pytest
import torch
from fastai.callback.core import Callback

from cifar_fastai.ema import EMA
from cifar_fastai.learner import cifar_learner
from cifar_fastai.loaders import cifar_dls
from tests.helpers import synthetic_cifar


@pytest.fixture(scope='module')
def dls(): return cifar_dls(synthetic_cifar(64, 32), bs=16, seed=0)


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 10))


def _learner(dls, decay, every=1):
    return cifar_learner(dls, model=_model(), ema=EMA(decay, every), channels_last=False, precision='fp32')


class Snapshots(Callback):
    "The live state after every training step, and at the start of every training batch"
    order = 90
    def before_fit(self): self.steps, self.starts = [], []
    def _copy(self): return {k: v.detach().clone() for k, v in self.model.state_dict().items()}
    def before_batch(self):
        if self.training: self.starts.append(self._copy())
    def after_step(self): self.steps.append(self._copy())


def _hand_ema(states, decay, start, every=1):
    "The average of every `every`th of `states` by the formula, from `start`: floats lerped, integers copied"
    avg = {k: v.clone().double() if v.is_floating_point() else v.clone() for k, v in start.items()}
    for n, state in enumerate(states, 1):
        if n % every: continue
        d = min(decay, (1 + n) / (10 + n)) ** every
        for k, v in state.items(): avg[k] = d * avg[k] + (1 - d) * v.double() if v.is_floating_point() else v.clone()
    return avg


@pytest.mark.parametrize('decay,every', [(0.5, 1), (0.9, 1), (0.9, 3)])
def test_the_model_ends_with_the_hand_computed_average_of_the_steps(dls, decay, every):
    learn = _learner(dls, decay, every)
    start = {k: v.clone() for k, v in learn.model.state_dict().items()}
    snaps = Snapshots()
    learn.fit(2, 0.1, cbs=snaps)
    expected = _hand_ema(snaps.steps, decay, start, every)
    assert len(snaps.steps) == 8  # 64 images, bs 16, 2 epochs
    for k, v in learn.model.state_dict().items():
        assert torch.allclose(v.double(), expected[k].double(), atol=1e-5), k
    assert not torch.allclose(learn.model[5].weight, snaps.steps[-1]['5.weight'])  # the average is not the live weights
    assert learn.ema.avg is None  # nothing left to pickle with `export`


def test_test_metrics_are_the_average_and_training_goes_on_from_the_live_weights():
    fresh = lambda: cifar_dls(synthetic_cifar(64, 32), bs=16, seed=0)  # the same batches for both learners
    learn, snaps = _learner(fresh(), 0.9), Snapshots()
    learn.fit(2, 0.1, cbs=snaps)
    for k, v in snaps.starts[4].items():  # first batch of epoch 2: the live weights of the last step of epoch 1
        assert torch.equal(v, snaps.steps[3][k]), k
    assert learn.validate()[0] == pytest.approx(learn.epoch_record.rows[-1]['test_loss'], rel=1e-5)
    without = cifar_learner(fresh(), model=_model(), channels_last=False, precision='fp32')
    without.fit(2, 0.1)
    train_losses = lambda l: [r['train_loss'] for r in l.epoch_record.rows]
    assert train_losses(learn) == pytest.approx(train_losses(without))
    assert learn.epoch_record.rows[-1]['test_loss'] != pytest.approx(without.epoch_record.rows[-1]['test_loss'])


def test_lr_find_neither_starts_an_average_nor_changes_the_weights(dls):
    learn = _learner(dls, 0.9)
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    learn.lr_find(num_it=5, show_plot=False)
    assert learn.ema.avg is None
    for k, v in learn.model.state_dict().items(): assert torch.equal(v, before[k]), k


@pytest.mark.parametrize('kwargs,name', [(dict(decay=0.), 'decay'), (dict(decay=1.), 'decay'), (dict(decay=-0.1), 'decay'),
                                         (dict(every=0), 'every'), (dict(every=1.5), 'every')])
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=f'`{name}`'): EMA(**kwargs)


def test_the_learner_refuses_an_ema_of_one(dls):
    with pytest.raises(ValueError, match='`ema`'): cifar_learner(dls, ema=1.0)
