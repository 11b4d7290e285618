"scripts/bench_ema.py: an average kept beside the recipe's scores as the recipe would with that decay"
import csv

import pytest
import torch

from cifar_fastai.ema import EMA
from cifar_fastai.learner import cifar_learner
from cifar_fastai.loaders import cifar_dls
from tests.helpers import load_script, synthetic_cifar


@pytest.fixture(scope='module')
def bench(): return load_script('bench_ema')


def _fit(bench, decay, shadow, path, every):
    "Two epochs of 4 steps from a fixed start: the recipe averages with `decay`, the script keeps `shadow` beside it"
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 10))
    dls = cifar_dls(synthetic_cifar(64, 32), bs=16, seed=0)
    learn = cifar_learner(dls, model=model, lr=0.1, ema=EMA(decay, every), channels_last=False, precision='fp32')
    learn.fit(2, cbs=[bench.ShadowAverages([shadow], every, path)])
    with path.open() as f: shadows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return learn.epoch_record.rows, shadows


@pytest.mark.parametrize('every', [1, 2])
def test_a_shadow_average_scores_as_the_recipe_with_its_decay(bench, tmp_path, every):
    own_a, shadow_a = _fit(bench, 0.5, 0.2, tmp_path/'a.csv', every)
    own_b, shadow_b = _fit(bench, 0.2, 0.5, tmp_path/'b.csv', every)
    assert [r['epoch'] for r in shadow_a] == [1, 2] and {r['decay'] for r in shadow_a} == {0.2}
    for own, shadow in ((own_b, shadow_a), (own_a, shadow_b)):
        assert [r['test_loss'] for r in shadow] == pytest.approx([r['test_loss'] for r in own], abs=1e-5)
        assert [r['test_accuracy'] for r in shadow] == pytest.approx([r['test_accuracy'] for r in own], abs=1e-9)
    assert [r['test_loss'] for r in shadow_a] != pytest.approx([r['test_loss'] for r in shadow_b], abs=1e-3)


def test_table_puts_each_decay_beside_the_recipe(bench, tmp_path):
    from cifar_fastai.callbacks import write_metrics
    run = tmp_path / 'run-a'
    run.mkdir()
    (run / 'config.json').write_text('{"lr_used": 0.0055, "ema": 0.998}')
    write_metrics(run / 'metrics.csv', [dict(epoch=e, train_loss=1., train_accuracy=.5, test_loss=1., test_accuracy=acc,
                                             lr=.0055, seconds=2.) for e, acc in ((1, .6951), (2, .7665))])
    (run / bench.SHADOWS).write_text('epoch,decay,test_loss,test_accuracy\n1,0.995,0.8,0.6951\n1,0.99,0.8,0.695\n'
                                     '2,0.995,0.7,0.7665\n2,0.99,0.7,0.7668\n')
    lines = bench.table([run]).splitlines()
    assert lines[0] == '`run-a` (lr 0.0055):'
    assert lines[2:6] == ['| epoch | recipe, decay 0.998 | decay 0.995 | decay 0.99 |', '|---|---|---|---|',
                          '| 1 | 69.51 % | 69.51 % | 69.50 % |', '| 2 | 76.65 % | 76.65 % | 76.68 % |']
