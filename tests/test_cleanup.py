"A fit that an exception ends (a NaN stop, Ctrl-C in training or in validation) leaves no autocast and the live weights"
import pytest
import torch
from fastai.callback.core import Callback

from cifar_fastai.callbacks import NonFiniteLossError
from cifar_fastai.learner import cifar_learner
from cifar_fastai.loaders import cifar_dls
from tests.helpers import synthetic_cifar, tiny_model


class LiveWeights(Callback):
    "The parameters after the last optimizer step: what the model holds outside validation, the average aside"
    order = 90  # (batch-norm statistics move with every training forward pass, the parameters with steps alone)
    def after_step(self): self.state = {k: v.detach().clone() for k, v in self.model.named_parameters()}


class RaiseAt(Callback):
    "Raise `error` after the forward pass of batch `n` of epoch 2, in training or in validation"
    order = -10  # in `after_loss`, before `StopOnNonFinite` (-5) looks at the loss

    def __init__(self, error, in_training: bool, n: int = 1):
        self.error, self.in_training, self.n = error, in_training, n

    def _here(self) -> bool: return self.epoch == 1 and self.iter == self.n and self.training == self.in_training

    def after_pred(self):
        if self._here() and not isinstance(self.error, float): raise self.error

    def after_loss(self):
        if self._here() and isinstance(self.error, float): self.learn.loss = torch.tensor(self.error)  # NaN or inf


@pytest.fixture
def learn():
    dls = cifar_dls(synthetic_cifar(64, 64), bs=16, seed=0)
    return cifar_learner(dls, model=tiny_model(), precision='bf16', ema=0.9, channels_last=False)


@pytest.mark.parametrize('error,in_training', [(float('nan'), True), (KeyboardInterrupt(), True),
                                               (KeyboardInterrupt(), False), (RuntimeError('a bug'), False)],
                         ids=['nan stop', 'ctrl-c in training', 'ctrl-c in validation', 'error in validation'])
def test_a_fit_ended_by_an_exception_leaves_no_autocast_and_the_live_weights(learn, error, in_training):
    live = LiveWeights()
    with pytest.raises(NonFiniteLossError if isinstance(error, float) else type(error)):
        learn.fit(2, 0.01, cbs=[live, RaiseAt(error, in_training)])
    assert not torch.is_autocast_enabled('cpu')  # autocast was on during the forward pass that raised
    for k, v in learn.model.named_parameters(): assert torch.equal(v, live.state[k]), k
    assert learn.ema.avg is not None and not torch.equal(learn.ema.avg[0], live.state['0.weight'])


def test_a_fit_after_an_interrupted_one_runs_and_ends_with_the_average(learn):
    with pytest.raises(KeyboardInterrupt): learn.fit(2, 0.01, cbs=RaiseAt(KeyboardInterrupt(), in_training=False))
    learn.fit(1, 0.01)
    assert len(learn.epoch_record.rows) == 2 and learn.ema.avg is None  # the average went into the model at the end
    assert learn.validate()[0] == pytest.approx(learn.epoch_record.rows[-1]['test_loss'], rel=1e-5)
