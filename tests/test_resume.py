"Runs that stop keep every complete epoch and resume to the same weights and learning rates"
import signal
import subprocess
import sys
import time

import pytest
import torch
from fastai.callback.core import Callback

from cifar_fastai.callbacks import read_metrics
from cifar_fastai.checkpoint import CHECKPOINT, load_checkpoint
from cifar_fastai.run import RunConfig, train

quiet = dict(log=lambda *a: None)


class InterruptAfter(Callback):
    "Raise `KeyboardInterrupt` once epoch `n` is complete and checkpointed, as Ctrl-C would"
    order = 90

    def __init__(self, n): self.n = n
    def after_epoch(self):
        if self.epoch + 1 == self.n: raise KeyboardInterrupt


def _config(**kw):
    # patience 0 and factor 0.5: the plateau lowers the rate within three epochs, so its state must survive
    return RunConfig(**{**dict(data='sample', epochs=3, lr=0.02, interpret=False, plateau_patience=0,
                               plateau_factor=0.5, bs=64), **kw})


@pytest.mark.parametrize('schedule', ['plateau', 'one-cycle'])
def test_resume_gives_the_weights_and_lrs_of_an_uninterrupted_run(tmp_path, schedule):
    full = train(_config(schedule=schedule), tmp_path / 'full', **quiet)
    with pytest.raises(KeyboardInterrupt):
        train(_config(schedule=schedule), tmp_path / 'cut', cbs=[InterruptAfter(2)], **quiet)
    assert load_checkpoint(tmp_path / 'cut')['epoch'] == 2
    resumed = train(_config(schedule=schedule), tmp_path / 'cut', resume=True, **quiet)
    a, b = read_metrics(tmp_path / 'full' / 'metrics.csv'), read_metrics(tmp_path / 'cut' / 'metrics.csv')
    assert [r['epoch'] for r in b] == [1, 2, 3]
    assert [r['lr'] for r in b] == pytest.approx([r['lr'] for r in a], rel=1e-6)
    assert [r['test_loss'] for r in b] == pytest.approx([r['test_loss'] for r in a], rel=1e-4)
    for (k, v), w in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(v.float(), w.float(), atol=1e-5), k
