"Damaged or changed run files are refused in one line, exit 1, the folder untouched; --resume changes only what it may"
import contextlib
import json
import os
import re
import shutil

import pytest
import torch

from cifar_fastai import cli
from cifar_fastai.callbacks import read_metrics
from cifar_fastai.checkpoint import load_checkpoint
from cifar_fastai.config import RunConfig, resume_changes, saved_config
from cifar_fastai.errors import ConfigError, RunFileError
from cifar_fastai.run import train
from tests.helpers import tiny_models

quiet = dict(log=lambda *a: None)
# patience 0 and a threshold no epoch meets: the plateau halves the rate after every epoch, with no warm-up or decay
PLATEAU = dict(plateau_patience=0, plateau_factor=0.5, plateau_threshold=10., warmup=0., anneal=0.)


def _config(**kw):
    return RunConfig(**{**dict(data='sample', epochs=2, bs=100, lr=0.05, precision='fp32', ema=0.9, interpret=False,
                               **PLATEAU), **kw})


@pytest.fixture(autouse=True)
def tiny():
    with tiny_models(): yield


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
    "A finished 2-epoch plateau run of the tiny model"
    run = tmp_path_factory.mktemp('finished') / 'run'
    with tiny_models(): train(_config(), run, **quiet)
    return run


@pytest.fixture
def run(finished, tmp_path):
    shutil.copytree(finished, tmp_path / 'run')
    return tmp_path / 'run'


def _files(folder) -> dict: return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _refused(argv, capsys, usage: bool = False) -> str:
    "The one line `argv` is refused with: exit status 1, or 2 after argparse's usage line when `usage`"
    with pytest.raises(SystemExit) as e: cli.main(argv)
    if usage:
        lines = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(lines) == 2 and lines[0].startswith('usage:'), lines
        return lines[1]
    assert isinstance(e.value.code, str)  # `sys.exit(message)`: the message on stderr, exit status 1
    assert len(e.value.code.splitlines()) == 1, e.value.code
    return e.value.code


class RunsCommand:
    "An object whose unpickling runs a shell command, as a tampered file could hold"
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return os.system, (f'touch {self.marker}',)


def test_weights_that_would_run_code_are_refused_in_one_line(run, capsys, tmp_path):
    torch.save({'conv.weight': RunsCommand(tmp_path / 'ran')}, run / 'model.pth')
    before = _files(run)
    line = _refused(['evaluate', str(run)], capsys)
    assert f"{run / 'model.pth'} is not a weights file" in line and 'would run code' in line
    assert not (tmp_path / 'ran').exists() and _files(run) == before


def test_weights_of_another_model_say_which_tensors_do_not_fit(run, capsys):
    torch.save(torch.nn.Linear(3, 2).state_dict(), run / 'model.pth')
    line = _refused(['evaluate', str(run)], capsys)
    assert "model.pth does not fit this run's model" in line and '2 unexpected (bias, weight)' in line


@pytest.mark.parametrize('spoil,words', [
    (lambda b: b[:len(b) // 2], 'damaged'), (lambda b: b'', 'damaged'), (lambda b: os.urandom(len(b)), 'damaged'),
    (lambda b: _saved({'epoch': 2, 'model': {}}), 'lacks opt, plateau, rng, rows'),
    (lambda b: _saved({**_checkpoint_of(b), 'epoch': 5}), 'inconsistent'),
    (lambda b: _saved({**_checkpoint_of(b), 'scaler': {'scale': 'big'}}), 'damaged fp16 loss scaler'),
    (lambda b: _saved({**_checkpoint_of(b), 'scaler': {'scale': 1024.}}), 'damaged fp16 loss scaler')])
def test_a_damaged_checkpoint_is_refused_in_one_line_and_the_folder_is_untouched(run, capsys, spoil, words):
    (run / 'checkpoint.pth').write_bytes(spoil((run / 'checkpoint.pth').read_bytes()))
    (run / 'model.pth').unlink()  # as if killed before the end: --resume needs the checkpoint
    before = _files(run)
    line = _refused(['train', '--resume', str(run)], capsys)
    assert str(run / 'checkpoint.pth') in line and words in line and 'cannot be recovered' in line
    assert _files(run) == before


def _saved(obj) -> bytes:
    import io
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _checkpoint_of(data: bytes) -> dict:
    import io
    return torch.load(io.BytesIO(data), weights_only=True)


@pytest.mark.parametrize('change,words', [
    (lambda c: c.pop('bs'), 'lacks bs'), (lambda c: c.pop('lr_used'), 'lacks lr_used'),
    (lambda c: c.update(epochs='80'), "--epochs must be a whole number, got '80'"),
    (lambda c: c.update(flip='yes'), "--flip must be true, false or 'alternate', got 'yes'"),
    (lambda c: c.update(flip=1), "--flip must be true or false or a string, got 1"),
    (lambda c: c.update(ema=1.5), '--ema must be in [0, 1)'),
    (lambda c: c.update(format=2), 'written by a newer version'),
    (lambda c: c.clear(), 'lacks data')])
@pytest.mark.parametrize('command', ['resume', 'evaluate'])
def test_a_changed_config_is_refused_in_one_line_naming_what_is_wrong(run, capsys, change, words, command):
    config = json.loads((run / 'config.json').read_text())
    change(config)
    (run / 'config.json').write_text(json.dumps(config))
    before = _files(run)
    line = _refused(['train', '--resume', str(run)] if command == 'resume' else ['evaluate', str(run)], capsys)
    assert str(run / 'config.json') in line and words in line
    assert _files(run) == before


def test_a_config_that_is_not_json_is_refused(run, capsys):
    (run / 'config.json').write_text('{"epochs": 2,')
    assert 'config.json is not valid JSON' in _refused(['evaluate', str(run)], capsys)


def test_a_config_from_before_an_option_existed_reads_with_the_behaviour_of_its_time(run):
    config = json.loads((run / 'config.json').read_text())
    for name in ('ema', 'ema_every', 'valid_pct', 'warmup', 'anneal', 'format'): config.pop(name)
    (run / 'config.json').write_text(json.dumps(config))
    old, _ = saved_config(run)
    # no average then, no held-out split, and no warm-up or decay (which a budget of 2 epochs would give today)
    assert (old.ema, old.ema_every, old.valid_pct, old.warmup, old.anneal) == (0., 1, 0., 0., 0.)


def test_export_is_written_atomically(run, monkeypatch):
    from cifar_fastai.evaluate import load_run
    learn, before = load_run(run), (run / 'export.pkl').read_bytes()
    def full_disk(obj, f, **kwargs):
        open(f, 'wb').write(b'partial')
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr('fastai.learner.torch.save', full_disk)
    with pytest.raises(OSError, match=f'Could not write {re.escape(str(run / "export.pkl"))}: No space left'):
        learn.export('export.pkl')
    assert (run / 'export.pkl').read_bytes() == before and not list(run.glob('.*.tmp'))


def test_a_picture_is_written_atomically(run, monkeypatch):
    from matplotlib.figure import Figure
    from cifar_fastai.plots import plot_curves
    plot_curves(run, path=run / 'curves.png')
    before = (run / 'curves.png').read_bytes()
    def full_disk(self, f, **kwargs):  # half a picture, then a full disk; to a file or a path, as savefig takes
        with open(f, 'wb') if isinstance(f, (str, os.PathLike)) else contextlib.nullcontext(f) as out:
            out.write(b'half')
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(Figure, 'savefig', full_disk)
    said = f'Could not write {re.escape(str(run / "curves.png"))}: No space left on device; the previous version, '
    with pytest.raises(OSError, match=said + r'if any, is intact: free space'):
        plot_curves(run, path=run / 'curves.png')
    assert (run / 'curves.png').read_bytes() == before and not list(run.glob('.*.tmp'))


def test_more_epochs_extend_a_plateau_run_as_if_it_had_been_asked_for_them(run, tmp_path):
    cli.main(['train', '--resume', str(run), '--epochs', '4'])
    longer = train(_config(epochs=4), tmp_path / 'longer', **quiet)
    rows, expected = read_metrics(run / 'metrics.csv'), longer.epoch_record.rows
    assert [r['lr'] for r in rows] == pytest.approx([0.05, 0.025, 0.0125, 0.00625])  # the plateau goes on halving
    assert [r['test_loss'] for r in rows] == pytest.approx([r['test_loss'] for r in expected], rel=1e-5)
    assert json.loads((run / 'config.json').read_text())['epochs'] == 4 and load_checkpoint(run)['epoch'] == 4
    resumed = torch.load(run / 'model.pth', weights_only=True)
    for k, v in longer.model.state_dict().items(): assert torch.allclose(resumed[k], v, atol=1e-6), k


@pytest.mark.parametrize('argv,words', [
    (['--bs', '64'], '--bs 64 contradicts the run, which was started with 100'),
    (['--lr', '0.1'], '--lr 0.1 contradicts'), (['--no-flip'], '--flip False contradicts'),
    (['--epochs', '1'], 'has trained 2 epochs already'),
    (['--out', 'elsewhere'], '--out elsewhere contradicts --resume')])
def test_an_option_that_contradicts_the_run_is_refused_by_name(run, capsys, argv, words):
    before = _files(run)
    assert words in _refused(['train', '--resume', str(run), *argv], capsys, usage=True)
    assert _files(run) == before


def test_a_one_cycle_run_is_not_extended(tmp_path):
    saved = _config(schedule='one-cycle')
    with pytest.raises(ConfigError, match='--epochs 4: a one-cycle run.*one cycle over its 2 epochs'):
        resume_changes(saved, epochs=4)
    assert resume_changes(saved, interpret=True).interpret  # what does not change the training may change


@pytest.mark.parametrize('train', [False, True], ids=['evaluate', 'interpret'])
def test_a_run_is_evaluated_on_the_data_it_recorded_reading_only_the_splits_needed(run, monkeypatch, tmp_path, train):
    from cifar_fastai import run as run_module
    from cifar_fastai.evaluate import load_run
    from tests.test_data import write_folders
    config = json.loads((run / 'config.json').read_text())
    (run / 'config.json').write_text(json.dumps({**config, 'data': None}))  # as a run that found its data by searching
    write_folders(tmp_path / 'elsewhere', classes=('cat', 'dog'), n=4)
    monkeypatch.setenv('CIFAR10_DIR', str(tmp_path / 'elsewhere'))  # what a search would find today
    reads, read = [], run_module.read_cifar10
    monkeypatch.setattr(run_module, 'read_cifar10', lambda source, **kw: reads.append((source, kw['test_only'])) or
                        read(source, **kw))
    learn = load_run(run, train=train)
    assert reads == [('sample', not train)] and learn.dls.data.source.startswith('bundled sample')
    assert len(learn.dls.data.train_x) == (500 if train else 200)  # without the training split, the test stands in


def test_an_annealed_plateau_run_is_extended_and_says_how_its_decay_moves(tmp_path):
    lines = []
    train(_config(warmup=0.05, anneal=0.5), tmp_path / 'run', **quiet)
    train(resume_changes(saved_config(tmp_path / 'run')[0], epochs=3), tmp_path / 'run', resume=True, log=lines.append)
    assert any('extended from 2; its warm-up and final decay now span 3 epochs' in l for l in lines)
    rows = read_metrics(tmp_path / 'run' / 'metrics.csv')
    assert [r['epoch'] for r in rows] == [1, 2, 3] and rows[2]['lr'] < 0.05 * 0.5 * 0.5  # the plateau's rate, decayed


@pytest.mark.parametrize('damaged', [b'epoch,train_loss\n1,0.5\n2,0.4x\n', b'epoch,train_loss\n1,0.5\n2\n',
                                     b'epoch,train_loss\n1,\xff\xfe\n'])
def test_a_damaged_metrics_file_is_refused_naming_it_and_how_to_write_it_again(tmp_path, damaged):
    from cifar_fastai.plots import plot_curves
    (tmp_path / 'metrics.csv').write_bytes(damaged)
    said = (f'{re.escape(str(tmp_path / "metrics.csv"))} is damaged '
            f'.*--resume {re.escape(str(tmp_path))}` write it again')
    with pytest.raises(RunFileError, match=said): read_metrics(tmp_path / 'metrics.csv')
    with pytest.raises(RunFileError, match=said): plot_curves(tmp_path, path=tmp_path / 'curves.png')
    assert not (tmp_path / 'curves.png').exists()
