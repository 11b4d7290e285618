"scripts/bench_accuracy.py: each run beside the reference log, and what the run was"
import json
from dataclasses import asdict

import pytest

from cifar_fastai.callbacks import write_metrics
from cifar_fastai.run import RunConfig
from tests.helpers import load_script


@pytest.fixture(scope='module')
def bench(): return load_script('bench_accuracy')


def _run(folder, accuracies, **config):
    "A run folder as `train` leaves it, with these test accuracies per epoch"
    folder.mkdir()
    record = {**asdict(RunConfig()), 'lr_mult': 4., 'lr_used': 0.0053, 'found_lr': 0.001325, 'precision_used': 'bf16',
              'lr_suggestions': {'minimum': 0.001325, 'num_it': 300},
              'n_train': 50000, 'n_test': 10000, 'processor': 'Test CPU', **config}
    (folder/'config.json').write_text(json.dumps(record))
    write_metrics(folder/'metrics.csv', [dict(epoch=e, train_loss=1., train_accuracy=.5, test_loss=.9, test_accuracy=a,
                                              lr=.0053, seconds=60.) for e, a in enumerate(accuracies, 1)])
    return folder


def test_table_gives_each_epoch_the_lead_over_the_reference_log(bench, tmp_path):
    a = _run(tmp_path/'a', [0.6, 0.64, 0.7, 0.75, 0.8])
    b = _run(tmp_path/'b', [0.5, 0.7])
    rows = bench.table([a, b]).splitlines()
    assert rows[0] == '| epoch | reference log | a | lead | b | lead |'
    assert rows[2] == '| 1 | 58.58 % | 60.00 % | +1.42 | 50.00 % | -8.58 |'
    assert rows[6] == '| 5 | 82.56 % | 80.00 % | -2.56 |  |  |'


@pytest.mark.parametrize('accuracies, verdict', [
    ([0.6, 0.64, 0.68, 0.74, 0.83], 'ahead of the reference log at 5 of 5 epochs: every one'),
    ([0.6, 0.64, 0.68, 0.74, 0.8], 'ahead of the reference log at 4 of 5 epochs'),
    ([0.6, 0.6], 'ahead of the reference log at 1 of 2 epochs (it stopped after epoch 2)')])
def test_describe_names_the_rate_rule_and_the_verdict(bench, tmp_path, accuracies, verdict):
    text = bench.describe(_run(tmp_path/'run', accuracies))
    assert text.startswith('- `run`: plateau (patience 5, threshold 0.0001), '
                           'lr 0.0053 (lr_find of 300 batches minimum x 4)')
    assert text.endswith(f'Test CPU; {verdict}')


@pytest.mark.parametrize('argv,said', [(['--data', 'sample'], '--data trains a run: give it a folder with --out RUN'),
                                       (['--data', 'nowhere', '--out', 'run'], 'nowhere does not exist')])
def test_training_without_a_folder_or_data_is_refused_in_one_line(bench, argv, said, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr('sys.argv', ['bench_accuracy.py'] + argv)
    with pytest.raises(SystemExit) as e: bench.main()
    assert e.value.code == 2 and said in capsys.readouterr().err.strip().splitlines()[-1]
