"Runs that stop keep what they trained up to their last checkpoint and resume to the same weights and learning rates"
import errno
import json
import os
from dataclasses import replace
import signal
import subprocess
import sys
import time

import pytest
import torch
from fastai.callback.core import Callback

from cifar_fastai import io
from cifar_fastai.callbacks import read_metrics
from cifar_fastai.checkpoint import load_checkpoint
from cifar_fastai.layout import CHECKPOINT
from cifar_fastai.errors import ConfigError, RunFileError
from cifar_fastai.run import RunConfig, train
from tests.helpers import InterruptAfter, NanFrom, tiny_models
from tests.test_data import write_folders

quiet = dict(log=lambda *a: None)


@pytest.fixture
def tiny():
    "What a run keeps and restores does not depend on its model: a tiny one keeps each run to a second"
    with tiny_models(): yield


def _config(**kw):
    # patience 1 and a threshold no epoch meets: the plateau halves the rate after epoch 2, once its count of epochs
    # without progress reached 2, so a run stopped after epoch 1 must keep that count
    return RunConfig(**{**dict(data='sample', epochs=3, lr=0.02, interpret=False, plateau_patience=1,
                               plateau_factor=0.5, plateau_threshold=10., bs=64), **kw})


@pytest.mark.usefixtures('tiny')
@pytest.mark.parametrize('schedule,options', [('plateau', dict(ema=0.)), ('one-cycle', dict(ema=0.)),
                                             ('linear', dict(ema=0., nesterov=True)),
                                             ('plateau', dict(ema=0.9, ema_every=3)),
                                             ('plateau', dict(ema=0., precision='fp16'))])
def test_resume_gives_the_weights_and_lrs_of_an_uninterrupted_run(tmp_path, schedule, options):
    # ema_every 3 with 7 steps an epoch: the step count of the average must survive the stop too; fp16: the loss
    # scaler's count of steps since its scale last changed
    full = train(_config(schedule=schedule, **options), tmp_path / 'full', **quiet)
    with pytest.raises(KeyboardInterrupt):
        train(_config(schedule=schedule, **options), tmp_path / 'cut', cbs=[InterruptAfter(1)], **quiet)
    assert load_checkpoint(tmp_path / 'cut')['epoch'] == 1
    assert (load_checkpoint(tmp_path / 'cut')['ema'] is not None) == bool(options['ema'])
    resumed = train(_config(schedule=schedule, **options), tmp_path / 'cut', resume=True, **quiet)
    a, b = read_metrics(tmp_path / 'full' / 'metrics.csv'), read_metrics(tmp_path / 'cut' / 'metrics.csv')
    assert [r['epoch'] for r in b] == [1, 2, 3]
    assert [r['lr'] for r in b] == pytest.approx([r['lr'] for r in a], rel=1e-6)
    assert [r['test_loss'] for r in b] == pytest.approx([r['test_loss'] for r in a], rel=1e-4)
    if schedule == 'plateau': assert [h['lr'] for h in full.opt.hypers] == [0.02 * 0.5]  # the one cut, after epoch 2
    assert [h['lr'] for h in resumed.opt.hypers] == pytest.approx([h['lr'] for h in full.opt.hypers], rel=1e-12)
    assert resumed.reduce_lr_on_plateau.state_dict() == full.reduce_lr_on_plateau.state_dict()
    for (k, v), w in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(v.float(), w.float(), atol=1e-5), k
    if 'precision' in options: assert resumed.autocast.scaler.state_dict() == full.autocast.scaler.state_dict()


class AtBatch(Callback):
    "Call `act` after training batch `batch` (1-based) of epoch `epoch`, once `Checkpoint` has seen the batch"
    order = 90  # after `Checkpoint` (70)

    def __init__(self, epoch, batch, act): self.at, self.act = (epoch, batch), act
    def after_batch(self):
        if self.training and (self.epoch + 1, self.iter + 1) == self.at: self.act()


def _interrupt(): raise KeyboardInterrupt


@pytest.mark.usefixtures('tiny')
@pytest.mark.parametrize('schedule,ema', [('plateau', dict(ema=0.)), ('one-cycle', dict(ema=0.9, ema_every=3)),
                                         ('linear', dict(ema=0.)), ('linear', dict(ema=0., bn_bias_scale=64.)),
                                         ('linear', dict(ema=0.9, ema_every=2, lookahead=True))])
def test_a_run_stopped_inside_an_epoch_resumes_from_its_last_batch_as_if_never_stopped(tmp_path, schedule, ema):
    config = lambda: _config(schedule=schedule, save_every=1e-9, **ema)  # a checkpoint after every batch
    full = train(config(), tmp_path / 'full', **quiet)
    with pytest.raises(KeyboardInterrupt):
        train(config(), tmp_path / 'cut', cbs=[AtBatch(epoch=2, batch=3, act=_interrupt)], **quiet)
    state = load_checkpoint(tmp_path / 'cut')
    assert state['epoch'] == 1 and state['partial']['batch'] == 3
    shorter = r"^--epochs 1: .* is inside epoch 2 already; leave --epochs out" if schedule == 'plateau' else 'one cycle'
    with pytest.raises(ConfigError, match=shorter):  # a plateau run would save half of epoch 2 as its model
        train(replace(config(), epochs=1), tmp_path / 'cut', resume=True, **quiet)
    logged = []
    resumed = train(config(), tmp_path / 'cut', resume=True, log=logged.append)
    assert any('after epoch 1 of 3 and 3 batches of epoch 2' in line for line in logged)
    assert any(line.startswith('Training epochs 2 to 3 (2 from its batch 4),') for line in logged)  # not '2 epochs'
    a, b = read_metrics(tmp_path / 'full' / 'metrics.csv'), read_metrics(tmp_path / 'cut' / 'metrics.csv')
    for key in ('train_loss', 'train_accuracy', 'lr', 'test_loss', 'test_accuracy'):  # the same batches, the same draws
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a], rel=1e-5), key
    assert [h['lr'] for h in resumed.opt.hypers] == pytest.approx([h['lr'] for h in full.opt.hypers], rel=1e-12)
    for (k, v), w in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(v.float(), w.float(), atol=1e-5), k


@pytest.mark.usefixtures('tiny')
@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_while_training_saves_after_the_next_batch_and_loses_nothing(tmp_path, sig):
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    full = train(_config(save_every=0.), tmp_path / 'full', **quiet)  # no saves inside an epoch but the stop's
    with pytest.raises(KeyboardInterrupt):
        signal_it = AtBatch(epoch=2, batch=3, act=lambda: os.kill(os.getpid(), sig))  # as Ctrl-C or a SIGTERM would
        train(_config(save_every=0.), tmp_path / 'cut', cbs=[signal_it], **quiet)
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # the handlers of before the fit are back
    state = load_checkpoint(tmp_path / 'cut')
    assert state['epoch'] == 1 and state['partial']['batch'] == 4  # the batch in progress when the signal came
    resumed = train(_config(save_every=0.), tmp_path / 'cut', resume=True, **quiet)
    a, b = read_metrics(tmp_path / 'full' / 'metrics.csv'), read_metrics(tmp_path / 'cut' / 'metrics.csv')
    assert [r['train_loss'] for r in b] == pytest.approx([r['train_loss'] for r in a], rel=1e-5)
    for (k, v), w in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(v.float(), w.float(), atol=1e-5), k


@pytest.mark.usefixtures('tiny')
def test_ctrl_c_during_the_last_batch_of_an_epoch_stops_after_that_epoch_is_saved(tmp_path):
    last = 500 // 64  # the sample's 500 training images in whole batches of 64
    full = train(_config(save_every=0.), tmp_path / 'full', **quiet)
    with pytest.raises(KeyboardInterrupt):  # asked during batch `last` - 1: the stop comes after batch `last`
        signal_it = AtBatch(epoch=2, batch=last - 1, act=lambda: os.kill(os.getpid(), signal.SIGINT))
        train(_config(save_every=0.), tmp_path / 'cut', cbs=[signal_it], **quiet)
    state = load_checkpoint(tmp_path / 'cut')
    assert state['epoch'] == 2 and state['partial'] is None  # epoch 2 whole, tested and recorded, not lost
    assert [r['epoch'] for r in read_metrics(tmp_path / 'cut' / 'metrics.csv')] == [1, 2]
    resumed = train(_config(save_every=0.), tmp_path / 'cut', resume=True, **quiet)
    for (k, v), w in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(v.float(), w.float(), atol=1e-5), k


class SignalWhileTesting(Callback):
    "Send SIGINT while epoch `n` is being validated, as a Ctrl-C during the test pass"
    def __init__(self, n): self.n = n
    def after_validate(self):
        if self.epoch + 1 == self.n: os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.usefixtures('tiny')
def test_ctrl_c_during_the_test_pass_stops_after_that_epoch_is_saved(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        train(_config(save_every=0.), tmp_path, cbs=[SignalWhileTesting(2)], **quiet)
    state = load_checkpoint(tmp_path)
    assert state['epoch'] == 2 and state['partial'] is None
    assert [r['epoch'] for r in read_metrics(tmp_path / 'metrics.csv')] == [1, 2]


@pytest.mark.usefixtures('tiny')
def test_a_checkpoint_with_a_damaged_record_of_its_last_epoch_is_refused_by_name(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        train(_config(save_every=1e-9), tmp_path, cbs=[AtBatch(epoch=1, batch=2, act=_interrupt)], **quiet)
    state = load_checkpoint(tmp_path)
    state['partial']['batch'] = -1
    torch.save(state, tmp_path / CHECKPOINT)
    with pytest.raises(RunFileError, match=f'{CHECKPOINT} holds a damaged record of the epoch it stopped in'):
        load_checkpoint(tmp_path)


@pytest.fixture(scope='module')
def small_data(tmp_path_factory):
    "Class folders of 2 x 40 random images in train and test: an epoch of the real ResNet18 in a second or two"
    root = tmp_path_factory.mktemp('small_data')
    write_folders(root, n=40)
    return root


def _cli(data, *args):
    return [sys.executable, '-m', 'cifar_fastai.cli', 'train', '--data', str(data), '--lr', '0.02', '--bs', '16',
            '--no-interpret', *args]


def _wait_for_epoch(run, n, proc, timeout=300):
    "Wait until `run` has a checkpoint of epoch `n` or later"
    start = time.time()
    while time.time() - start < timeout:
        if (run / CHECKPOINT).exists() and load_checkpoint(run)['epoch'] >= n: return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    pytest.fail(f'no checkpoint of epoch {n} after {timeout} s')


@pytest.mark.parametrize('sig', [signal.SIGKILL, signal.SIGTERM])  # SIGINT takes the SIGTERM path
def test_a_killed_run_resumes_with_no_epoch_lost_or_repeated(tmp_path, sig, small_data):
    run = tmp_path / 'run'
    proc = subprocess.Popen(_cli(small_data, '--epochs', '3', '--out', str(run)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_epoch(run, 1, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    done = load_checkpoint(run)['epoch']
    assert 1 <= done < 3 and [r['epoch'] for r in read_metrics(run / 'metrics.csv')] == list(range(1, done + 1))
    if sig != signal.SIGKILL: assert proc.returncode == 1 and f'--resume {run}' in err
    resumed = subprocess.run(_cli(small_data, '--resume', str(run)), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert [r['epoch'] for r in read_metrics(run / 'metrics.csv')] == [1, 2, 3]
    assert not list(run.glob('.*.tmp'))  # no half-written file left behind


class BlowUpAt(Callback):
    "Set an absurd learning rate at the start of epoch `n`, so that the loss overflows"
    def __init__(self, n): self.n = n
    def before_epoch(self):
        if self.epoch + 1 == self.n: self.opt.set_hypers(lr=1e12)


@pytest.mark.usefixtures('tiny')
def test_a_non_finite_loss_stops_the_run_naming_epoch_and_batch(tmp_path):
    from cifar_fastai.callbacks import NonFiniteLossError
    with pytest.raises(NonFiniteLossError, match=r'at epoch 2, batch \d+.*lower --lr'):
        train(_config(epochs=3), tmp_path, cbs=[BlowUpAt(2)], **quiet)
    state = load_checkpoint(tmp_path)
    floats = [v for v in state['model'].values() if v.is_floating_point()]
    assert state['epoch'] == 1 and all(torch.isfinite(v).all() for v in floats)


@pytest.mark.usefixtures('tiny')
def test_after_a_resume_inside_an_epoch_a_non_finite_loss_names_the_batch_of_the_epoch(tmp_path):
    from cifar_fastai.callbacks import NonFiniteLossError
    with pytest.raises(KeyboardInterrupt):
        train(_config(save_every=1e-9), tmp_path, cbs=[AtBatch(epoch=2, batch=3, act=_interrupt)], **quiet)
    with pytest.raises(NonFiniteLossError, match=r'at epoch 2, batch 5:'):  # the second batch after the 3 done
        train(None, tmp_path, resume=True, cbs=[NanFrom(2)], **quiet)


class FillDiskAfter(Callback):
    "After epoch `n` is checkpointed, make every later `torch.save` fail as on a full disk"
    order = 90

    def __init__(self, n, path, monkeypatch): self.n, self.path, self.monkeypatch = n, path, monkeypatch
    def after_epoch(self):
        if self.epoch + 1 != self.n: return
        self.saved = (self.path / CHECKPOINT).read_bytes()
        def full_disk(obj, f):
            f.write(b'partial')
            raise OSError(errno.ENOSPC, 'No space left on device')
        self.monkeypatch.setattr(io.torch, 'save', full_disk)


@pytest.mark.usefixtures('tiny')
def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    fill = FillDiskAfter(1, tmp_path, monkeypatch)
    with pytest.raises(OSError, match='Could not write .*checkpoint.pth.*intact'):
        train(_config(epochs=2), tmp_path, cbs=[fill], **quiet)
    assert (tmp_path / CHECKPOINT).read_bytes() == fill.saved and not list(tmp_path.glob('.*.tmp'))


def test_a_new_run_refuses_a_folder_that_holds_one(tmp_path):
    (tmp_path / 'config.json').write_text('{}')
    with pytest.raises(ConfigError, match='already holds a run.*--resume'): train(_config(), tmp_path, **quiet)


def test_an_output_folder_that_cannot_be_made_is_named(tmp_path, capsys):
    from cifar_fastai import cli
    (tmp_path / 'file').write_text('not a folder')
    with pytest.raises(SystemExit) as e:
        cli.main(['train', '--data', 'sample', '--out', str(tmp_path / 'file' / 'run')])
    said = str(e.value)
    assert e.value.code != 0 and 'Cannot write in output folder' in said and str(tmp_path / 'file') in said


@pytest.mark.usefixtures('tiny')
def test_a_run_whose_data_moved_resumes_from_where_it_is_now_and_refuses_other_data(tmp_path, capsys):
    from cifar_fastai import cli
    write_folders(tmp_path / 'data', n=20)
    write_folders(tmp_path / 'fewer', n=19)  # the same classes, one image a class less
    config = lambda where: _config(data=str(where), bs=8, valid_pct=0.1)
    train(config(tmp_path / 'data'), tmp_path / 'full', **quiet)
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path / 'data'), tmp_path / 'cut', cbs=[InterruptAfter(1)], **quiet)
    run, moved = tmp_path / 'cut', (tmp_path / 'data').rename(tmp_path / 'moved')
    before = {p.name: p.read_bytes() for p in run.iterdir()}

    def refused(*argv) -> str:
        with pytest.raises(SystemExit) as e: cli.main(['train', '--resume', str(run), *argv])
        assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing written
        return str(e.value.code) if e.value.code != 2 else capsys.readouterr().err.splitlines()[-1]  # 2: usage
    assert refused() == (f"cifar-fastai: error: {tmp_path / 'data'}, the data {run / 'config.json'} records, does not "
                         f"exist: pass --data PATH to read it from where it is now")
    assert refused('--data', str(tmp_path / 'fewer')) == (
        f"cifar-fastai: error: --data {tmp_path / 'fewer'} holds 34 train, 4 held-out and 38 test images of ['cat', "
        f"'dog'], but {run} was trained on 36 train, 4 held-out and 40 test images of ['cat', 'dog']: pass the data "
        f"it was trained on, or start a new run")
    cli.main(['train', '--resume', str(run), '--data', str(moved)])
    a, b = read_metrics(tmp_path / 'full' / 'metrics.csv'), read_metrics(run / 'metrics.csv')
    assert [r['valid_loss'] for r in b] == pytest.approx([r['valid_loss'] for r in a], rel=1e-4)  # the same split
    assert [r['test_loss'] for r in b] == pytest.approx([r['test_loss'] for r in a], rel=1e-4)
    record = json.loads((run / 'config.json').read_text())
    assert (record['data'], record['data_source']) == (str(moved), f'class folders in {moved}')
    cli.main(['evaluate', str(run)])  # reads the data from where it is now, no --data needed
    assert capsys.readouterr().out.splitlines()[-1].startswith('Accuracy on the 40 test images: ')
