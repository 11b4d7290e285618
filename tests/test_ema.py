"The weight average: torch's `AveragedModel` EMA and a case worked by hand, tested in place of the live weights, kept"
import pytest
import torch
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.optimizer import SGD
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

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


def _state(model) -> dict: return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _tensors(model) -> list: return [t.detach().clone() for t in [*model.parameters(), *model.buffers()]]


class Snapshots(Callback):
    "The live state after every training step, and at the start of every training batch"
    order = 90
    def before_fit(self): self.steps, self.starts = [], []
    def before_batch(self):
        if self.training: self.starts.append(_state(self.model))
    def after_step(self): self.steps.append(_state(self.model))


# ------------------------------------------------------------------ a 1-weight model, its average worked out by hand

class OneWeight(torch.nn.Module):
    "Predicts `w` for every input: with the loss `pred.mean()` each SGD step of rate 1 takes exactly 1 off `w`"
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
    def forward(self, x): return self.w.expand(len(x))


class TrainLosses(Callback):
    "The loss of every training batch"
    def before_fit(self): self.losses = []
    def after_loss(self):
        if self.training: self.losses.append(self.loss.item())


def _one_weight_learner(decay, every, lookahead=False) -> Learner:
    "2 training batches of one item (2 steps an epoch), 1 test item: the test loss is the weight the model tests with"
    items = [(torch.zeros(1), torch.zeros(())) for _ in range(2)]
    dls = DataLoaders(DataLoader(items, bs=1), DataLoader(items[:1], bs=1), device='cpu')
    return Learner(dls, OneWeight(), loss_func=lambda pred, y: pred.mean(), opt_func=SGD, lr=1.,
                   cbs=EMA(decay, every, lookahead))  # fastai's SGD: no momentum, no weight decay


# The live weight is 0 at the start and -n after step n. An update at step n takes the average to
# d * avg + (1 - d) * w_n with d = min(decay, (1 + n) / (10 + n)) ** every:
# decay 0.9, every 1: d = 2/11, 3/12, 4/13, 5/14 -> avg -9/11, -75/44 (epoch 1), -372/143, -3504/1001 (epoch 2)
# decay 0.2, every 1: d = 2/11, then 0.2 (the cap) -> -9/11, -97/55, -757/275, -5157/1375
# decay 0.9, every 2: updates at steps 2 and 4 only, d = (3/12)**2 = 1/16 then (5/14)**2 = 25/196
#                     -> 15/16 * -2 = -15/8, then 25/196 * -15/8 + 171/196 * -4 = -5847/1568
@pytest.mark.parametrize('decay,every,averages', [(0.9, 1, [-75 / 44, -3504 / 1001]),
                                                  (0.2, 1, [-97 / 55, -5157 / 1375]),
                                                  (0.9, 2, [-15 / 8, -5847 / 1568])])
def test_a_one_weight_model_tests_with_and_ends_with_the_average_worked_out_by_hand(decay, every, averages):
    learn, train = _one_weight_learner(decay, every), TrainLosses()
    learn.fit(2, lr=1., cbs=train)
    assert [v[1] for v in learn.recorder.values] == pytest.approx(averages, rel=1e-6)  # each epoch tested the average
    assert train.losses == [0., -1., -2., -3.]  # and training went on from the live weights
    assert learn.model.w.item() == pytest.approx(averages[-1], rel=1e-6)


# Lookahead over the 4 steps of 2 epochs: an update at step n keeps d = decay ** every * (n / 4) ** 3 of the average,
# and the live weight restarts from the average, then the step takes 1 off it:
# decay 0.8, every 1: d = 1/80, 1/10, 27/80, 4/5; live -1 -> avg -79/80, live -159/80 -> avg -151/80 (epoch 1),
#                     live -231/80 -> avg -51/20, live -71/20 -> avg -11/4 (epoch 2)
# decay 0.8, every 2: updates at steps 2 and 4, d = 2/25 then 16/25; live -2 -> avg -46/25, live -96/25 -> avg -64/25
@pytest.mark.parametrize('every,averages,losses', [(1, [-151 / 80, -11 / 4], [0., -79 / 80, -151 / 80, -51 / 20]),
                                                   (2, [-46 / 25, -64 / 25], [0., -1., -46 / 25, -71 / 25])])
def test_a_lookahead_restarts_the_live_weight_from_an_average_whose_decay_rises_as_worked_out_by_hand(every, averages,
                                                                                                       losses):
    learn, train = _one_weight_learner(0.8, every, lookahead=True), TrainLosses()
    learn.fit(2, lr=1., cbs=train)
    assert [v[1] for v in learn.recorder.values] == pytest.approx(averages, rel=1e-6)
    assert train.losses == pytest.approx(losses, rel=1e-6)  # each batch starts from the weight the last update left
    assert learn.model.w.item() == pytest.approx(averages[-1], rel=1e-6)


# ------------------------------------------------------------------ torch's `AveragedModel` as the reference

def _torch_ema(decay: float):
    "torch's EMA for the float tensors (weights, batch-norm statistics); the integer batch count copied, as ours does"
    ema = get_ema_multi_avg_fn(decay)
    def update(averages, live, n_averaged):
        if averages[0].is_floating_point(): ema(averages, live, n_averaged)
        else:
            for a, t in zip(averages, live): a.copy_(t)
    return update


class TorchAverage(Callback):
    "An `AveragedModel` of the live model that starts at the fit's first weights, updated after every `every`th step"
    order = 90  # after `EMA` (5): the same live weights as it, after each step

    def __init__(self, decay: float, every: int): self.decay, self.every = decay, every  # decay per step

    def before_fit(self):
        # torch's per-update decay: `every` steps of `decay` each, as `EMA` documents
        self.ref = AveragedModel(self.model, multi_avg_fn=_torch_ema(self.decay ** self.every), use_buffers=True)
        self.ref.update_parameters(self.model)  # the first update copies: the average starts at the weights
        self.n = 0

    def after_step(self):
        self.n += 1
        if self.n % self.every == 0: self.ref.update_parameters(self.model)


def _assert_same_state(actual: dict, expected: dict):
    assert actual.keys() == expected.keys()
    for k, v in actual.items():
        if v.is_floating_point(): torch.testing.assert_close(v, expected[k], rtol=1e-5, atol=1e-6, msg=k)
        else: assert torch.equal(v, expected[k]), k


# decay 0.15: the warm-up min(decay, (1 + n) / (10 + n)) >= 2/11 never binds, so every update has the fixed decay of
# `get_ema_multi_avg_fn`; the warm-up itself is pinned by the hand-worked cases above
@pytest.mark.parametrize('every,last_update', [(1, 8), (3, 6)])
def test_the_model_ends_with_torchs_averaged_model_of_weights_and_batch_norm_statistics(dls, every, last_update):
    learn, ref, snaps = _learner(dls, 0.15, every), TorchAverage(0.15, every), Snapshots()
    learn.fit(2, 0.1, cbs=[ref, snaps])
    assert len(snaps.steps) == 8  # 64 images, bs 16, 2 epochs
    _assert_same_state(_state(learn.model), _state(ref.ref.module))
    live = snaps.steps[-1]
    assert not torch.allclose(learn.model[5].weight, live['5.weight'])  # the average is not the live weights
    assert not torch.allclose(learn.model[1].running_mean, live['1.running_mean'])  # statistics averaged too
    assert learn.model[1].num_batches_tracked.item() == last_update  # the live batch count of the last update
    assert learn.ema.avg is None  # nothing left to pickle with `export`


def test_a_loaded_average_goes_on_from_its_weights_and_its_step_count(dls):
    # a state saved at step 5 of an average updated every 2 steps: the next updates are at steps 6, 8, ...
    saved_model = _model()
    with torch.no_grad():
        for p in saved_model.parameters(): p.add_(1.)  # an average unlike the weights the fit starts from
        saved_model[1].running_var.fill_(2.)
    learn, snaps = _learner(dls, 0.15, 2), Snapshots()
    learn.ema.load_state_dict(dict(decay=0.15, every=2, n=5, avg=[t.double() for t in _tensors(saved_model)]))
    assert all(a.dtype == t.dtype for a, t in zip(learn.ema.avg, _tensors(learn.model)))  # the model's dtypes
    assert (learn.ema.n, learn.ema.every) == (5, 2)
    start = _state(learn.model)
    learn.fit(1, 0.1, cbs=snaps)
    # the reference: started from the loaded average rather than the live weights, then updated alike
    ref_from_saved = AveragedModel(saved_model, multi_avg_fn=_torch_ema(0.15 ** 2), use_buffers=True)
    ref_from_saved.update_parameters(saved_model)
    live = _model()
    for n, state in enumerate(snaps.steps, 6):
        if n % 2: continue
        live.load_state_dict(state)
        ref_from_saved.update_parameters(live)
    _assert_same_state(_state(learn.model), _state(ref_from_saved.module))
    assert not torch.allclose(learn.model[5].weight, start['5.weight'])


def test_a_saved_average_that_does_not_fit_the_model_is_refused(dls):
    learn = _learner(dls, 0.9)
    bigger = torch.nn.Linear(4, 11)
    with pytest.raises(ValueError, match='does not fit the model'):
        learn.ema.load_state_dict(dict(decay=0.9, every=1, n=3, avg=[*_tensors(_model())[:-1], bigger.weight]))


# ------------------------------------------------------------------ the swap in and out of validation

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
    before = _state(learn.model)
    learn.lr_find(num_it=5, show_plot=False)
    assert learn.ema.avg is None
    for k, v in learn.model.state_dict().items(): assert torch.equal(v, before[k]), k


@pytest.mark.parametrize('kwargs,name', [(dict(decay=0.), 'decay'), (dict(decay=1.), 'decay'),
                                         (dict(decay=-0.1), 'decay'), (dict(every=0), 'every'),
                                         (dict(every=1.5), 'every')])
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=f'`{name}`'): EMA(**kwargs)


def test_the_learner_refuses_an_ema_of_one(dls):
    with pytest.raises(ValueError, match='`ema`'): cifar_learner(dls, ema=1.0)
