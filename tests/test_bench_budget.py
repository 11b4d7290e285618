"scripts/bench_budget.py: each run's accuracy at the budgets, plain and with flip TTA, below the public anchors"
import json
from dataclasses import asdict

import pytest

from cifar_fastai.callbacks import write_metrics
from cifar_fastai.evaluate import predict
from cifar_fastai.run import RunConfig
from tests.helpers import load_script


@pytest.fixture(scope='module')
def bench(): return load_script('bench_budget')


def _run(folder, accuracies, split='test', tta=(), **config):
    "A run folder as `train` leaves it, with these accuracies per epoch on `split` (and flip-TTA ones if given)"
    folder.mkdir()
    (folder/'config.json').write_text(json.dumps({**asdict(RunConfig(**config)), 'lr_used': 0.05}))
    held_out = {'valid_loss': .9} if split == 'valid' else {}  # then the test split's 10 % must not show
    write_metrics(folder/'metrics.csv', [{'epoch': e, 'train_loss': 1., 'train_accuracy': .5, **held_out,
                                          'test_loss': .9, 'test_accuracy': 0.1, f'{split}_accuracy': a, 'lr': .05,
                                          'seconds': 120., **({'test_tta_accuracy': tta[e - 1]} if tta else {})}
                                         for e, a in enumerate(accuracies, 1)])
    return folder


def test_each_run_gives_its_accuracy_at_the_budgets_and_its_minutes(bench, tmp_path):
    run = _run(tmp_path/'fast', [0.5 + 0.02 * e for e in range(12)], epochs=12, schedule='one-cycle', seed=1)
    row = bench.table([run], tta=False).splitlines()[-1].split(' | ')
    assert row[0] == '| `fast`' and row[1] == 'one-cycle, 12 epochs, lr 0.05, seed 1'
    assert row[2:7] == ['58.00', '68.00', '', '', ''] and row[7] == '12: 72.00' and row[8] == '24 |'


def test_a_run_trained_with_tta_gives_plain_and_tta_at_each_budget_without_predicting_again(bench, tmp_path):
    run = _run(tmp_path/'tta', [0.5 + 0.02 * e for e in range(10)], tta=[0.51 + 0.02 * e for e in range(10)], epochs=10)
    row = bench.table([run]).splitlines()[-1].split(' | ')  # no model.pth in the folder: nothing is predicted again
    assert row[2:5] == ['58.00 / 59.00', '68.00 / 69.00', ''] and row[7] == '10: 68.00 / 69.00'


def test_runs_with_a_held_out_split_show_their_validation_accuracy(bench, tmp_path):
    run = _run(tmp_path/'sel', [0.6] * 4 + [0.7], split='valid', epochs=5, valid_pct=0.1)
    row = bench.table([run]).splitlines()[-1]  # no TTA: the choice is made on the held-out split alone
    assert 'valid 10%' in row and '| 70.00 |' in row and '5: 70.00 |' in row


def test_tta_column_is_the_saved_weights_predicted_with_their_mirror(bench, sample_run):
    learn, run = sample_run
    row = bench.table([run]).splitlines()[-1]
    plain, tta = row.split(' | ')[7].split(': ')[1].split(' / ')
    assert float(tta) == pytest.approx(100 * predict(learn, tta=True).accuracy, abs=0.51)


def test_a_folder_that_is_not_a_run_is_named_in_one_line(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr('sys.argv', ['bench_budget.py', '--no-tta', '--runs', str(tmp_path)])
    with pytest.raises(SystemExit) as e: bench.main()
    assert e.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"bench_budget.py: error: {tmp_path} is not a run folder: it has no config.json")
