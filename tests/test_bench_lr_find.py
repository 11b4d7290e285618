"scripts/bench_lr_find.py: the spread of the range test's suggestion over seeds, per range-test length"
import json

import matplotlib.image
import pytest

from tests.helpers import load_script


@pytest.fixture(scope='module')
def bench(): return load_script('bench_lr_find')


def _record(seed, iters, minimum, seconds=10.):
    return dict(seed=seed, iters=iters, suggestions={'minimum': minimum, 'valley': minimum / 5}, seconds=seconds)


def test_table_gives_each_length_its_spread_and_median(bench):
    records = [_record(0, 100, 0.001), _record(1, 100, 0.003), _record(2, 100, 0.002, 20.),
               _record(0, 300, 0.0012), _record(1, 300, 0.0015)]
    rows = bench.table(records, mult=4).splitlines()
    assert rows[0].startswith('| batches | seed 0 | seed 1 | seed 2 | largest / smallest |')
    assert rows[2] == '| 100 | 0.00100 | 0.00300 | 0.00200 | 3.00 | 0.00200 | 0.00800 | 13 |'
    assert rows[3] == '| 300 | 0.00120 | 0.00150 |  | 1.25 | 0.00135 | 0.00540 | 10 |'


def test_measure_records_a_range_test_and_keeps_it(bench, tmp_path, monkeypatch):
    record = bench.measure('sample', 0, 12, tmp_path)
    assert record['seed'] == 0 and record['iters'] == 12 and record['suggestions']['minimum'] > 0
    assert json.loads((tmp_path/'12-seed0.json').read_text()) == record
    assert matplotlib.image.imread(tmp_path/'lr_find-12-seed0.png').shape[2] in (3, 4)
    monkeypatch.setattr(bench, 'run_dls', lambda *a, **k: pytest.fail('a finished test was run again'))
    assert bench.measure('sample', 0, 12, tmp_path) == record
    assert bench.read_records(tmp_path) == [record]
