"scripts/fold_runs.py: run folders become rows of one CSV, with their options, accuracies and what they taught"
import csv
import json

import pytest

from cifar_fastai.callbacks import write_metrics
from tests.helpers import load_script


@pytest.fixture
def fold(monkeypatch):
    module = load_script('fold_runs')
    monkeypatch.setattr(module, 'TAUGHT', {'old': 'an old run', 'new': 'a new run', 'new@ema0.99': 'a decay beside it'})
    return module


def _run(folder, accuracies, shadows=None, **config):
    "A run folder as `train` (and `bench_ema.py`, for `shadows`: {decay: accuracies}) leaves it"
    folder.mkdir()
    record = dict(schedule='plateau', lr='find', bs=64, seed=0, lr_used=0.005) | config
    (folder / 'config.json').write_text(json.dumps(record))
    write_metrics(folder / 'metrics.csv', [dict(epoch=e, train_loss=1., train_accuracy=.5, test_loss=.9, lr=.005,
                                                test_accuracy=a, seconds=60.) for e, a in enumerate(accuracies, 1)])
    if shadows:
        rows = [dict(epoch=e, decay=d, test_loss=.9, test_accuracy=a) for d, accs in shadows.items()
                for e, a in enumerate(accs, 1)]
        with open(folder / 'shadow_averages.csv', 'w', newline='') as f:
            csv.DictWriter(f, fieldnames=list(rows[0])).writeheader()
            csv.DictWriter(f, fieldnames=list(rows[0])).writerows(rows)
    return folder


def test_each_run_and_each_decay_scored_beside_it_is_a_row(fold, tmp_path):
    old = _run(tmp_path / 'old', [0.5, 0.6123], lr_used=0.00275422874)  # before lr_mult, ema and lr_find_iters
    new = _run(tmp_path / 'new', [0.7, 0.8], shadows={0.99: [0.69, 0.81]}, lr_used=0.0079, lr_mult=5., ema=0.998,
               ema_every=4, lr_find_iters=300)
    fold.write([old, new], tmp_path / 'sweeps.csv')
    with open(tmp_path / 'sweeps.csv', newline='') as f: rows = {r['name']: r for r in csv.DictReader(f)}
    assert list(rows) == ['old', 'new', 'new@ema0.99']
    assert (rows['old']['lr_mult'], rows['old']['ema'], rows['old']['ema_every'], rows['old']['lr_find_iters']) == \
        ('1', '0', '', '100')
    assert (rows['old']['epoch_1'], rows['old']['epoch_2'], rows['old']['epoch_3']) == ('50.00', '61.23', '')
    assert rows['old']['lr_used'] == '0.00275423' and rows['old']['taught'] == 'an old run'
    assert (rows['new']['lr_mult'], rows['new']['ema'], rows['new']['lr_find_iters']) == ('5.0', '0.998', '300')
    assert (rows['new@ema0.99']['ema'], rows['new@ema0.99']['epoch_2'], rows['new@ema0.99']['lr_used']) == \
        ('0.99', '81.00', '0.0079')


def test_a_run_without_a_lesson_is_refused(fold, tmp_path):
    with pytest.raises(SystemExit, match='no line in TAUGHT for stray'): fold.write([_run(tmp_path / 'stray', [0.5])],
                                                                                    tmp_path / 'sweeps.csv')


def test_the_markdown_table_has_a_row_per_run(fold, tmp_path):
    fold.write([_run(tmp_path / 'old', [0.5, 0.6])], tmp_path / 'sweeps.csv')
    lines = fold.markdown(tmp_path / 'sweeps.csv').splitlines()
    assert lines[0] == '| run | epoch 1 | epoch 2 | epoch 3 | epoch 4 | epoch 5 | what it taught |'
    assert lines[2] == '| `old` | 50.00 | 60.00 |  |  |  | an old run |' and len(lines) == 3
