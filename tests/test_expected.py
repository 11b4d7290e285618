"What a run says to expect: the measured runs, as their own files in docs/results give them, for the same recipe"
import csv
import json
import statistics
from pathlib import Path

import pytest

from cifar_fastai.expected import MEASURED, Measured, expectation, measured_runs, same_recipe
from cifar_fastai.run import RunConfig, train
from tests.test_data import write_folders

RESULTS = Path(__file__).resolve().parents[1] / 'docs' / 'results'


def _evidence(run: str) -> tuple[dict, list]:
    "The `config.json` and the `metrics.csv` rows that the run left in docs/results/"
    with open(RESULTS / run / 'metrics.csv', newline='') as f: rows = list(csv.DictReader(f))
    return json.loads((RESULTS / run / 'config.json').read_text()), rows


@pytest.mark.parametrize('measured', measured_runs(), ids=lambda m: m.run)
def test_each_measured_run_is_what_its_own_files_in_docs_results_say(measured):
    config, rows = _evidence(measured.run)
    assert (measured.schedule, measured.epochs, measured.seed) == (config['schedule'], config['epochs'], config['seed'])
    assert (config['n_train'], config['n_test'], config['valid_pct'], config['cores']) == (50_000, 10_000, 0., 2)
    assert len(rows) == config['epochs'] and measured.processor == config['processor']
    assert measured.test_accuracy == float(rows[-1]['test_accuracy'])
    assert measured.tta_accuracy == float(rows[-1]['test_tta_accuracy'])
    seconds = [float(r['seconds']) for r in rows]
    assert measured.minutes == pytest.approx(len(seconds) * statistics.median(seconds) / 60, abs=0.05)


@pytest.mark.parametrize('measured', measured_runs(), ids=lambda m: m.run)
def test_each_measured_run_trained_with_what_its_recipe_gives_today(measured):
    # a default changed since the run would make its figures claims about another recipe, unless `options` says so
    # read as `--resume` reads it: an option added since the run takes the value the run trained with
    config = RunConfig.from_record(_evidence(measured.run)[0], RESULTS / measured.run / 'config.json')
    assert same_recipe(config, measured.changes)
    today = RunConfig(epochs=measured.epochs, schedule=measured.schedule)
    assert all(getattr(today, name) != value for name, value in measured.changes.items())  # none it need not name


def test_a_measured_runs_options_read_as_fields_and_as_the_command_line():
    measured = Measured('a', 'linear', 8, 0, 0.86, 0.87, 44., 'CPU A', options='cutout=16 ema=0.996 bs=128')
    assert measured.changes == dict(cutout=16, ema=0.996, bs=128)
    assert measured.flags == '--cutout 16 --ema 0.996 --bs 128'
    assert Measured('b', 'linear', 8, 0, 0.86, 0.87, 44., 'CPU A').changes == {}


def test_the_measured_table_is_installed_with_the_package():
    assert MEASURED.parent.name == 'cifar_fastai' and MEASURED.is_file()
    setup = (Path(__file__).resolve().parents[1] / 'setup.cfg').read_text()
    assert 'measured.csv' in setup.split('[options.package_data]')[1].split('[')[0]  # `pip install .` copies it


@pytest.mark.parametrize('changes,same', [
    (dict(seed=7, tta=True, data='x', workers=2, precision='fp32', interpret=False, save_every=0.), True),
    (dict(cutout=8), False), (dict(lr_mult=10.), False), (dict(pad=0), False), (dict(lr=0.05), False),
    (dict(ema=0.), False), (dict(bs=128), False)])
def test_the_same_recipe_is_the_schedules_defaults_at_the_budget_whatever_the_seed_or_hardware(changes, same):
    assert same_recipe(RunConfig(epochs=20, schedule='one-cycle', **changes)) is same


RUNS = [Measured('a', 'one-cycle', 10, 0, 0.8612, 0.8655, 61.4, 'CPU A'),
        Measured('b', 'one-cycle', 20, 1, 0.8924, 0.8966, 116.6, 'CPU B'),
        Measured('c', 'one-cycle', 20, 0, 0.8875, 0.8950, 124.5, 'CPU B'),
        Measured('d', 'plateau', 50, 0, 0.9134, 0.9203, 291.1, 'CPU B')]


def test_a_measured_budget_gives_the_span_over_its_seeds():
    said = expectation(RunConfig(epochs=20, schedule='one-cycle', seed=5), 50_000, 10_000, RUNS)
    assert said == ("Measured before on full CIFAR-10 (BENCHMARKS.md), one-cycle for 20 epochs: 88.75-89.24 % test "
                    "accuracy (89.50-89.66 % with flip TTA), seeds 0, 1, about 117-125 min on 2 cores of CPU B")


def test_a_run_with_options_is_quoted_for_those_options_only_and_says_them():
    runs = RUNS + [Measured('e', 'one-cycle', 8, 0, 0.8635, 0.8666, 44.1, 'CPU A', options='cutout=16')]
    with_hole = expectation(RunConfig(epochs=8, schedule='one-cycle', cutout=16), 50_000, 10_000, runs)
    assert with_hole.startswith("Measured before on full CIFAR-10 (BENCHMARKS.md), one-cycle for 8 epochs with "
                                "--cutout 16: 86.35 % test accuracy (86.66 % with flip TTA), seed 0, about 44 min")
    default = expectation(RunConfig(epochs=8, schedule='one-cycle'), 50_000, 10_000, runs)  # no cutout below 10
    assert default.startswith("Measured before on full CIFAR-10 (BENCHMARKS.md), one-cycle for 10 epochs: 86.12 %")
    assert '8 epochs' not in default.split(' (not measured')[0]


def test_a_budget_not_measured_gives_the_nearest_below_and_above_and_says_so():
    said = expectation(RunConfig(epochs=15, schedule='one-cycle'), 50_000, 10_000, RUNS)
    assert said.startswith("Measured before on full CIFAR-10 (BENCHMARKS.md), one-cycle for 10 epochs: 86.12 % "
                           "test accuracy (86.55 % with flip TTA), seed 0, about 61 min on 2 cores of CPU A; "
                           "20 epochs: ")
    assert said.endswith(" (not measured at 15 epochs)")
    beyond = expectation(RunConfig(epochs=40, schedule='one-cycle'), 50_000, 10_000, RUNS)
    assert '20 epochs: 88.75-89.24 %' in beyond and '10 epochs' not in beyond


def test_two_recipes_at_one_budget_that_both_rescale_to_the_run_are_quoted_apart():
    # below 10 epochs the default has no cutout; from 10 on, 16: both runs at 8 are 'the recipe' of a 15-epoch run
    runs = [Measured('e', 'one-cycle', 8, 0, 0.8625, 0.8674, 39.9, 'CPU A', options='cutout=16 ema=0.99'),
            Measured('f', 'one-cycle', 8, 0, 0.8658, 0.8724, 53.4, 'CPU B', options='ema=0.99'),
            Measured('g', 'one-cycle', 8, 1, 0.8630, 0.8672, 44.5, 'CPU A', options='ema=0.99 cutout=16')]
    said = expectation(RunConfig(epochs=15, schedule='one-cycle', ema=0.99), 50_000, 10_000, runs)
    assert said == ("Measured before on full CIFAR-10 (BENCHMARKS.md), one-cycle for 8 epochs with --ema 0.99: 86.58 % "
                    "test accuracy (87.24 % with flip TTA), seed 0, about 53 min on 2 cores of CPU B; 8 epochs with "
                    "--cutout 16 --ema 0.99: 86.25-86.30 % test accuracy (86.72-86.74 % with flip TTA), seeds 0, 1, "
                    "about 40-45 min on 2 cores of CPU A (not measured at 15 epochs)")


@pytest.mark.parametrize('config,n_train,n_test', [
    (RunConfig(epochs=20, schedule='one-cycle'), 500, 200),                    # the bundled sample
    (RunConfig(epochs=20, schedule='one-cycle', valid_pct=0.1), 45_000, 10_000),  # a held-out split
    (RunConfig(epochs=20, schedule='one-cycle', cutout=8), 50_000, 10_000),       # a recipe of one's own
    (RunConfig(epochs=20, schedule='plateau'), 50_000, 10_000)])                 # no measured run of its schedule
def test_nothing_is_said_where_no_measured_run_compares(config, n_train, n_test):
    assert expectation(config, n_train, n_test, [m for m in RUNS if m.schedule == 'one-cycle']) is None


class _RangeTest(Exception): "The range test was reached"


def _range_test(*args): raise _RangeTest


def test_a_new_run_says_it_before_the_range_test(tmp_path, monkeypatch):
    monkeypatch.setattr('cifar_fastai.expected.FULL_CIFAR10', (80, 80))  # as if these 80 + 80 images were CIFAR-10
    monkeypatch.setattr('cifar_fastai.expected.measured_runs', lambda: RUNS)  # not the shipped table, which changes
    monkeypatch.setattr('cifar_fastai.run._find_lr_on_main', _range_test)
    write_folders(tmp_path / 'data', classes=('cat', 'dog'), n=40)  # a batch of the default 64 to train on
    config, lines = RunConfig(data=str(tmp_path / 'data'), interpret=False), []
    with pytest.raises(_RangeTest): train(config, tmp_path / 'run', log=lines.append, progress=False)
    # after the line on the data, before the range test, in RUNS' words for 'd'
    assert lines[1:] == ["Measured before on full CIFAR-10 (BENCHMARKS.md), plateau for 50 epochs: 91.34 % test "
                         "accuracy (92.03 % with flip TTA), seed 0, about 291 min on 2 cores of CPU B"]
