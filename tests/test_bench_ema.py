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
