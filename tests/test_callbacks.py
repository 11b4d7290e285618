"ReduceLROnPlateau follows torch's scheduler and really sets the optimizer's rate; the per-epoch record is right"
import math
from types import SimpleNamespace

import pytest
import torch
from fastai.callback.core import Callback

from cifar_fastai.callbacks import EpochRecord, ReduceLROnPlateau, plateau_replay
from cifar_fastai.learner import cifar_learner
from cifar_fastai.loaders import cifar_dls
from tests.helpers import synthetic_cifar

SEQUENCES = {
    'falls then stalls': [2.0, 1.5, 1.2, 1.2, 1.21, 1.19, 1.2, 1.3, 1.25, 1.1, 1.1, 1.1, 1.1, 1.1],
    'noisy': [1.0, 0.9, 0.95, 0.92, 0.91, 0.9, 0.89, 0.93, 0.97, 0.99, 0.88, 0.88, 0.87, 0.9, 0.91, 0.95],
    'rises': [0.5 + 0.1 * i for i in range(12)],
    'tiny gains': [1.0 - 1e-5 * i for i in range(15)],
}
SETTINGS = [
    dict(),
    dict(factor=0.5, patience=1),
    dict(factor=0.5, patience=0, cooldown=2),
    dict(factor=0.2, patience=1, threshold=0.05, threshold_mode='abs'),
    dict(factor=0.1, patience=0, min_lr=1e-3),
    dict(factor=0.5, patience=1, mode='max', threshold=0.01),
    dict(factor=0.9, patience=0, eps=0.02),
]


def _torch_lrs(values, lr0, **kw):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kw)
    out = []
    for v in values:
        sched.step(v)
        out.append(opt.param_groups[0]['lr'])
    return out


def _our_lrs(values, lr0, **kw):
    plateau, lrs, out = ReduceLROnPlateau(**kw), [lr0], []
    for v in values:
        lrs = plateau.step(v, lrs)
        out.append(lrs[0])
    return out


@pytest.mark.parametrize('settings', SETTINGS, ids=lambda s: ','.join(f'{k}={v}' for k, v in s.items()) or 'defaults')
@pytest.mark.parametrize('name', list(SEQUENCES))
def test_plateau_sets_the_same_rates_as_torch(name, settings):
    values = SEQUENCES[name]
    assert _our_lrs(values, 0.1, **settings) == pytest.approx(_torch_lrs(values, 0.1, **settings), rel=1e-12)


@pytest.mark.parametrize('settings', SETTINGS, ids=lambda s: ','.join(f'{k}={v}' for k, v in s.items()) or 'defaults')
@pytest.mark.parametrize('name', list(SEQUENCES))
def test_replaying_a_run_finds_the_epochs_where_torch_lowered_the_rate(name, settings):
    lrs = [0.1] + _torch_lrs(SEQUENCES[name], 0.1, **settings)
    assert plateau_replay(SEQUENCES[name], 0.1, **settings)[0] == [e for e in range(1, len(lrs)) if lrs[e] < lrs[e - 1]]


def test_replay_gives_the_longest_wait_without_a_new_best():
    # new bests at epochs 1, 2, 5; epochs 3-4 and 6-8 wait: 3 is the longest, short of patience 3's cut
    assert plateau_replay([1.0, 0.9, 0.95, 0.96, 0.8, 0.85, 0.81, 0.9], 0.1, patience=3) == ([], 3)
    assert plateau_replay([1.0, 0.9, 0.95, 0.96, 0.8, 0.85, 0.81, 0.9], 0.1, patience=2) == ([8], 2)


def test_the_sequences_exercise_reductions():
    "Guard for the test above: most cases must really lower the rate, or agreement would prove little"
    lowered = sum(_torch_lrs(v, 0.1, **s)[-1] < 0.1 for v in SEQUENCES.values() for s in SETTINGS)
    assert lowered >= len(SEQUENCES) * len(SETTINGS) * 2 // 3


@pytest.mark.parametrize('kwargs', [dict(mode='up'), dict(threshold_mode='pct'), dict(factor=1.0)])
def test_bad_plateau_arguments_are_named(kwargs):
    with pytest.raises(ValueError, match=list(kwargs)[0]): ReduceLROnPlateau(**kwargs)


class SeenLR(Callback):
    "Record the learning rate the optimizer applies at each training step"
    def before_fit(self): self.lrs = []
    def after_step(self): self.lrs.append(self.opt.hypers[0]['lr'])  # what fastai's SGD step reads


@pytest.fixture(scope='module')
def dls(): return cifar_dls(synthetic_cifar(64, 32), bs=32, seed=0)


def _learner(dls, plateau):
    return cifar_learner(dls, model=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3072, 10)),
                         plateau=plateau, channels_last=False, precision='fp32')


def test_plateau_lowers_the_rate_the_optimizer_uses_during_fit(dls):
    # abs threshold 100: only the first epoch improves, so with patience 0 each later epoch halves the rate
    learn = _learner(dls, dict(factor=0.5, patience=0, threshold=100, threshold_mode='abs'))
    seen = SeenLR()
    learn.fit(4, 0.04, cbs=seen)
    assert [r['lr'] for r in learn.epoch_record.rows] == pytest.approx([0.04, 0.04, 0.02, 0.01])
    assert seen.lrs == pytest.approx([0.04] * 4 + [0.02] * 2 + [0.01] * 2)  # 2 steps an epoch
    assert learn.opt.hypers[0]['lr'] == pytest.approx(0.005)


def test_plateau_stopping_at_its_floor_ends_the_fit_when_a_cut_is_due_there(dls):
    # only the first epoch improves: cuts after epochs 2 and 3 reach the floor, the one due after epoch 4 ends the fit
    learn = _learner(dls, dict(factor=0.5, patience=0, threshold=100, threshold_mode='abs', min_lr=0.01,
                               stop_at_min_lr=True))
    learn.fit(8, 0.04)
    assert [r['lr'] for r in learn.epoch_record.rows] == pytest.approx([0.04, 0.04, 0.02, 0.01])
    assert learn.reduce_lr_on_plateau.bottomed_out and learn.reduce_lr_on_plateau.state_dict()['bottomed_out']


def test_plateau_without_the_stop_trains_on_at_its_floor_as_torch_does(dls):
    learn = _learner(dls, dict(factor=0.5, patience=0, threshold=100, threshold_mode='abs', min_lr=0.01))
    learn.fit(6, 0.04)
    assert [r['lr'] for r in learn.epoch_record.rows] == pytest.approx([0.04, 0.04, 0.02, 0.01, 0.01, 0.01])


def test_plateau_leaves_one_cycle_alone(dls):
    strict = dict(factor=0.5, patience=0, threshold=100, threshold_mode='abs')
    runs = []
    for plateau in (strict, dict(patience=1000)):
        learn, seen = _learner(dls, plateau), SeenLR()
        learn.fit_one_cycle(3, 0.04, cbs=seen)
        runs.append(seen.lrs)
    assert runs[0] == pytest.approx(runs[1]) and max(runs[0]) == pytest.approx(0.04, rel=0.05)


def test_epoch_record_matches_fastai_recorder_on_the_test_set(dls):
    learn = _learner(dls, None)
    learn.fit(2, 0.01)
    names = learn.recorder.metric_names[1:]
    for row, values in zip(learn.epoch_record.rows, learn.recorder.values):
        fastai_row = dict(zip(names, values))
        assert row['test_loss'] == pytest.approx(fastai_row['valid_loss'], rel=1e-5)
        assert row['test_accuracy'] == pytest.approx(fastai_row['valid_accuracy'], abs=1e-6)
        assert row['train_accuracy'] == pytest.approx(fastai_row['train_accuracy'], abs=1e-6)
    assert [r['epoch'] for r in learn.epoch_record.rows] == [1, 2]
    assert all(r['seconds'] > 0 and math.isfinite(r['train_loss']) for r in learn.epoch_record.rows)


def test_validate_after_fit_changes_neither_the_rate_nor_the_record(dls):
    # `validate` fires epoch events outside `fit`: the plateau must not take its loss for an epoch's
    learn = _learner(dls, dict(factor=0.5, patience=0, threshold=100, threshold_mode='abs'))
    learn.fit(2, 0.04)
    rows, lr = [dict(r) for r in learn.epoch_record.rows], learn.opt.hypers[0]['lr']
    loss, acc = learn.validate()
    assert loss == pytest.approx(rows[-1]['test_loss'], rel=1e-5) and acc == pytest.approx(rows[-1]['test_accuracy'])
    assert learn.epoch_record.rows == rows and learn.opt.hypers[0]['lr'] == lr == pytest.approx(0.02)


class ReadEachBatch(Callback):
    "A plain record: each batch's loss and correct count read with `.item()`, summed in Python"
    order = 56
    def before_fit(self): self.epochs = []
    def before_epoch(self): self.sums = {'train': [0., 0, 0], 'test': [0., 0, 0]}
    def after_batch(self):
        n, sums = len(self.yb[0]), self.sums['train' if self.training else 'test']
        correct = (self.pred.argmax(dim=-1) == self.yb[0]).sum().item()
        for i, v in enumerate((self.loss.item() * n, correct, n)): sums[i] += v
    def after_epoch(self): self.epochs.append(self.sums)


def test_epoch_record_equals_the_sums_of_each_batch_read_on_its_own(dls):
    learn, reference = _learner(dls, None), ReadEachBatch()
    learn.fit(2, 0.05, cbs=reference)
    assert len(learn.epoch_record.rows) == len(reference.epochs) == 2
    for row, sums in zip(learn.epoch_record.rows, reference.epochs):
        for split, (loss, correct, n) in sums.items():
            assert n == (64 if split == 'train' else 32)
            assert row[f'{split}_loss'] == pytest.approx(loss / n, rel=1e-12)
            assert row[f'{split}_accuracy'] == correct / n


def test_epoch_record_adds_batches_on_their_device_without_reading_them():
    # values of `meta` tensors cannot be read: any `.item()` or `.tolist()` per batch would raise
    record = EpochRecord()
    record.learn = SimpleNamespace(model=torch.nn.Linear(2, 2, device='meta'))
    record.before_epoch()
    for split in ('train', 'train', 'valid', 'test'):
        record.add(split, torch.ones((), device='meta'), torch.zeros(4, 10, device='meta'),
                   torch.zeros(4, dtype=torch.long, device='meta'))
    assert all(s.device.type == 'meta' and s.shape == (3,) for s in record.sums.values())
