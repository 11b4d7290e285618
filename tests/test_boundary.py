"A process killed at any instant of the epoch boundary leaves a folder that `--resume` finishes, every epoch once"
import multiprocessing
import os
import shutil
from pathlib import Path

import pytest
import torch

from cifar_fastai import cli
from cifar_fastai.callbacks import read_metrics
from cifar_fastai.checkpoint import load_checkpoint
from cifar_fastai.layout import CHECKPOINT
from tests.helpers import tiny_models
from tests.test_data import write_folders

KILLED = 86  # the exit status of a child stopped by `_die_at`
FIXTURE = Path(__file__).parent / 'fixtures' / 'run-619f03b'


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    "One thread in this process and in the children it forks (which must not use its thread pool): the same sums"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def tiny():
    "The files of a run do not depend on its model: a tiny one keeps each killed run to a second"
    with tiny_models(): yield


def _argv(run, *more):
    return ['train', '--data', 'sample', '--epochs', '2', '--lr', '0.05', '--bs', '100', '--precision', 'fp32',
            '--no-interpret', '--out', str(run), *more]


def _die_at(argv, name: str, nth: int, after: bool):
    "Run the command line, and exit at once, as `kill -9` would, at the `nth` rename of a temporary file onto `name`"
    rename, seen = os.replace, []
    def replace(src, dst):
        if Path(dst).name == name: seen.append(dst)
        if len(seen) == nth and not after: os._exit(KILLED)  # the temporary file is written, not yet renamed
        rename(src, dst)
        if len(seen) == nth: os._exit(KILLED)
    os.replace = replace
    cli.main(argv)


def _kill(argv, name, nth, after=False):
    "`_die_at` in a forked process: the package is imported already, so a killed run costs its epochs alone"
    child = multiprocessing.get_context('fork').Process(target=_die_at, args=(argv, name, nth, after))
    child.start()
    child.join(timeout=300)
    assert child.exitcode == KILLED, f'the child ended with {child.exitcode} before writing {name} #{nth}'


def _weights(path): return torch.load(path, weights_only=True)


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
    "The model.pth and metrics of the same run, not killed"
    run = tmp_path_factory.mktemp('uninterrupted') / 'run'
    with tiny_models(): cli.main(_argv(run))
    return _weights(run / 'model.pth'), read_metrics(run / 'metrics.csv')


def _epochs_agree(run):
    "The metrics never hold an epoch the checkpoint lacks: they are its rows, or a prefix of them"
    rows = read_metrics(run / 'metrics.csv') if (run / 'metrics.csv').exists() else []
    saved = load_checkpoint(run)['rows'] if (run / CHECKPOINT).exists() else []
    assert [r['epoch'] for r in rows] == [r['epoch'] for r in saved][:len(rows)]
    return len(saved)


@pytest.mark.parametrize('name,nth,after,done', [
    ('checkpoint.pth', 1, False, 0),  # epoch 1's checkpoint written, not renamed: no complete epoch
    ('checkpoint.pth', 1, True, 1),   # checkpoint of epoch 1 in place, its metrics not yet written
    ('metrics.csv', 1, False, 1),     # epoch 1's metrics written, not renamed
    ('checkpoint.pth', 2, False, 1),  # during the last checkpoint
    ('model.pth', 1, False, 2),       # every epoch done, the weights not yet in place
    ('export.pkl', 1, False, 2)])     # the export not yet in place
def test_a_run_killed_at_the_epoch_boundary_resumes_to_the_uninterrupted_run(tmp_path, uninterrupted, name, nth, after,
                                                                           done):
    run = tmp_path / 'run'
    _kill(_argv(run), name, nth, after)
    assert _epochs_agree(run) == done
    cli.main(['train', '--resume', str(run)])
    weights, rows = uninterrupted
    assert [r['epoch'] for r in read_metrics(run / 'metrics.csv')] == [1, 2] and _epochs_agree(run) == 2
    assert [r['test_loss'] for r in read_metrics(run / 'metrics.csv')] == pytest.approx([r['test_loss'] for r in rows])
    for k, v in _weights(run / 'model.pth').items(): assert torch.allclose(v, weights[k], atol=1e-6), k
    assert (run / 'export.pkl').is_file() and not list(run.glob('.*.tmp'))


def test_a_start_killed_before_its_config_is_written_starts_again_with_the_same_command(tmp_path, capsys):
    run = tmp_path / 'run'
    _kill(_argv(run), 'config.json', 1)
    assert [p.name.split('.')[1] for p in run.iterdir()] == ['config']  # only the temporary file of config.json
    with pytest.raises(SystemExit) as e: cli.main(['train', '--resume', str(run)])
    assert e.value.code == 2 and 'is not a run folder' in capsys.readouterr().err
    cli.main(_argv(run))
    assert [r['epoch'] for r in read_metrics(run / 'metrics.csv')] == [1, 2] and not list(run.glob('.*.tmp'))


def test_a_run_folder_of_today_resumes_as_if_never_stopped(tmp_path, monkeypatch):
    # run-619f03b: written by the code of commit 619f03b (tests/fixtures/make_run_619f03b.py), stopped after epoch 2
    # of 3, found its data by searching (the sample) and holds out a validation split. As that code could, it left
    # the metrics of an epoch whose checkpoint it never wrote, and that checkpoint's temporary file.
    run = tmp_path / 'run'
    shutil.copytree(FIXTURE / 'cut', run)
    config = (run / 'config.json').read_bytes()
    with open(run / 'metrics.csv', 'a') as f: f.write('3,9,0,9,0,9,0,0.05,1\n')
    (run / '.checkpoint.pth.k2v9x1qa.tmp').write_bytes(b'half a checkpoint')
    write_folders(tmp_path / 'elsewhere', classes=('cat', 'dog'), n=4)
    monkeypatch.setenv('CIFAR10_DIR', str(tmp_path / 'elsewhere'))  # a search today would find other data
    cli.main(['train', '--resume', str(run)])
    rows, full = read_metrics(run / 'metrics.csv'), read_metrics(FIXTURE / 'full' / 'metrics.csv')
    kept = (FIXTURE / 'cut' / 'metrics.csv').read_text().splitlines()  # header, epochs 1 and 2
    assert (run / 'metrics.csv').read_text().splitlines()[:3] == kept
    assert [r['epoch'] for r in rows] == [1, 2, 3]
    for key in ('train_loss', 'valid_loss', 'test_loss', 'test_accuracy', 'lr'):
        assert rows[2][key] == pytest.approx(full[2][key], rel=1e-4), key
    full_weights = _weights(FIXTURE / 'full' / 'model.pth')
    for k, v in _weights(run / 'model.pth').items(): assert torch.allclose(v, full_weights[k], atol=1e-5), k
    assert (run / 'config.json').read_bytes() == config and not list(run.glob('.*.tmp'))
