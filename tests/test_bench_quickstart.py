"scripts/bench_quickstart.py: the phases of a Quickstart run read from the times of the files it wrote"
import os
from datetime import datetime

import pytest

from tests.helpers import load_script


@pytest.fixture(scope='module')
def bench(): return load_script('bench_quickstart')


def _touch(path, when: float):
    path.write_text('')
    os.utime(path, (when, when))


def test_phases_follow_the_files_of_the_run(bench, tmp_path):
    "A run named at 12:00:00 after a 95 s install; files at +28 s, +4:11, +10 s, +72 s, +1 s; the clock stops 3 s on"
    named = datetime(2026, 12, 2, 12, 0, 0).timestamp()
    run = tmp_path / '20261202-120000'
    run.mkdir()
    _touch(run / 'lr_find.png', named + 28)
    _touch(run / 'metrics.csv', named + 28 + 251)
    _touch(run / 'top_losses.png', named + 28 + 251 + 10)
    _touch(run / 'faithfulness.md', named + 28 + 251 + 10 + 72)
    _touch(run / 'report.md', named + 28 + 251 + 10 + 72 + 1)
    got = bench.phases(named - 95, run, named + 362 + 3)
    assert got == [('install', 95), ('range test', 28), ('training', 251), ('pictures', 10),
                   ('faithfulness table', 72), ('report', 1), ('after the last file', 3)]


def test_a_run_without_the_faithfulness_table_leaves_its_phase_out(bench, tmp_path):
    "Code that writes no faithfulness.md: its pictures run on to the report"
    named = datetime(2026, 11, 22, 9, 11, 0).timestamp()
    run = tmp_path / '20261122-091100'
    run.mkdir()
    for name, offset in (('lr_find.png', 223), ('metrics.csv', 518), ('top_losses.png', 529), ('report.md', 529)):
        _touch(run / name, named + offset)
    assert [n for n, _ in bench.phases(named - 101, run, named + 530)] == [
        'install', 'range test', 'training', 'pictures', 'report', 'after the last file']


def test_minutes(bench):
    assert [bench.minutes(s) for s in (490.4, 631, 59.6, 0)] == ['8:10', '10:31', '1:00', '0:00']
