"Specifications of the report: every picture in the run folder, and a report.md that carries the run's numbers"
import csv
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from cifar_fastai.callbacks import write_metrics
from cifar_fastai.evaluate import Predictions, predict
from cifar_fastai.interpret import STAGES, measure_faithfulness
from cifar_fastai.report import (FAITHFULNESS, PICTURES, REPORT, accuracy_markdown, faithfulness_markdown, gradcam_run,
                                 interpret_run, write_report)
from cifar_fastai.run import ConfigError


@pytest.fixture(scope='module')
def reported(sample_run):
    "The sample run after `interpret_run`, 5 mistakes drawn, maps scored on 3 test images: (learn, run, paths, report)"
    learn, run = sample_run
    paths = interpret_run(learn, run, k=5, faithfulness_images=3, faithfulness_steps=2)
    return learn, run, paths, (run / REPORT).read_text()


def test_interpret_run_writes_every_picture_the_faithfulness_table_then_the_report(reported):
    _, run, paths, text = reported
    assert [p.name for p in paths] == [*PICTURES.values(), FAITHFULNESS, REPORT] and 'the 5 most confident' in text
    assert '## LayerCAM' in text and f'cifar-fastai gradcam {run} --cam gradcam` draws it here' in text  # the default
    assert 'reads one pixel in four' in text  # what LayerCAM's lattice of dots is
    for p in paths[:-2]:
        with Image.open(p) as im: assert im.format == 'PNG' and min(im.size) > 100


_MEAN_SE = r'(-?\d+\.\d{3}) ± (\d+\.\d{3})'


def _faithfulness_rows(text: str) -> dict:
    "{(stage, method): [deletion, insertion, insertion - deletion] as (mean, standard error)} read from `text`"
    found = re.findall(rf'^\| (layer\d) \| ([^|]+) \| {_MEAN_SE} \| {_MEAN_SE} \| {_MEAN_SE} \|$', text, re.M)
    return {(layer, name): [(float(m), float(se)) for m, se in zip(nums[::2], nums[1::2])]
            for layer, name, *nums in found}


def test_report_carries_the_faithfulness_of_each_method_and_random_maps_at_each_stage(reported):
    learn, run, _, text = reported
    rows = measure_faithfulness(learn, predict(learn), n=3, steps=2)  # the raw scores of each image, as the run drew
    names = {'gradcam': 'Grad-CAM', 'layercam': 'LayerCAM', 'gradcam++': 'Grad-CAM++', 'random': 'random maps'}
    table = _faithfulness_rows(text)
    assert len(rows) == len(table) == 4 * len(STAGES)
    for r in rows:
        deletion, insertion = r['deletion'].double().numpy(), r['insertion'].double().numpy()
        assert len(deletion) == 3
        for (mean, se), scores in zip(table[r['layer'], names[r['method']]],
                                      [deletion, insertion, insertion - deletion]):
            # numpy's mean and scipy's standard error of the mean (n - 1 in the variance), to the 3 decimals shown
            assert mean == pytest.approx(np.mean(scores), abs=5e-4 + 1e-9), (r['layer'], r['method'])
            assert se == pytest.approx(stats.sem(scores), abs=5e-4 + 1e-9), (r['layer'], r['method'])
    assert (run / FAITHFULNESS).read_text().strip() in text and 'on 3 test images' in text


def test_report_has_the_per_class_table_with_the_ten_classes(reported):
    learn, _, _, text = reported
    p = predict(learn)
    preds, targets = p.probs.numpy().argmax(axis=1), p.targets.numpy()
    assert len(learn.dls.vocab) == 10
    for i, c in enumerate(learn.dls.vocab):
        n, correct = np.sum(targets == i), np.sum((preds == i) & (targets == i))
        assert n == 20 and f'| {c} | 20 | {correct} | {100 * correct / 20:.2f} % |' in text, c
    correct = np.sum(preds == targets)
    assert f'| **all** | 200 | {correct} | **{100 * correct / 200:.2f} %** |' in text


def _metrics_csv(path) -> list:
    "The rows of metrics.csv read with the csv module, numbers as floats"
    with open(path, newline='') as f: return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def test_report_carries_the_accuracies_of_metrics_csv(reported):
    _, run, _, text = reported
    rows = _metrics_csv(run / 'metrics.csv')
    assert len(rows) == 2  # the sample run's 2 epochs
    for r in rows: assert f"| {r['epoch']:.0f} | {r['train_loss']:.4f} | {100 * r['train_accuracy']:.2f} % |" in text
    best = rows[0] if rows[0]['test_accuracy'] >= rows[1]['test_accuracy'] else rows[1]  # a tie: the first
    assert (f"| best test accuracy | {best['epoch']:.0f} | {100 * best['train_accuracy']:.2f} % "
            f"| {100 * best['test_accuracy']:.2f} % |") in text
    assert f"| 1 | 58.58 % | {100 * rows[0]['test_accuracy']:.2f} % |" in text and '| 5 | 82.56 % | not run |' in text


def test_report_links_only_to_pictures_that_exist(reported):
    _, run, _, text = reported
    links = re.findall(r'!\[[^\]]*\]\(([^)]+)\)', text)
    assert set(PICTURES.values()) <= set(links)
    assert all((run / l).is_file() for l in links)


def test_report_states_speed_and_machine(reported):
    text = reported[3]
    assert re.search(r'[\d.]+ s per epoch on average .* [\d.]+ training images per second \(500 / ', text)
    assert 'threads: ' in text and 'device: cpu' in text and f'torch {torch.__version__}' in text


def test_gradcam_run_writes_the_two_grids_and_updates_the_report_with_its_method(reported):
    learn, run, _, _ = reported
    paths = gradcam_run(learn, run, k=4, cam='gradcam++', faithfulness_images=0)
    assert [p.name for p in paths] == ['misclassified.png', 'gradcam.png', REPORT]
    text = (run / REPORT).read_text()
    assert '## Grad-CAM++' in text and 'Grad-CAM++ (`--cam gradcam++`)' in text and 'the 4 most confident' in text
    assert (run / FAITHFULNESS).read_text().strip() in text  # the table measured before is kept
    with pytest.raises(ValueError, match='gradcam, layercam'): gradcam_run(learn, run, cam='gradcam+')


def test_faithfulness_markdown_of_a_hand_computed_case():
    rows = [dict(layer='layer1', method='layercam', deletion=torch.tensor([.2, .4]), insertion=torch.tensor([.9, .7]))]
    table = faithfulness_markdown(rows, steps=8).splitlines()[-1]
    # standard errors: std([.2, .4]) / sqrt(2) = 0.1; differences .7, .3: 0.2
    assert table == '| layer1 | LayerCAM | 0.300 ± 0.100 | 0.800 ± 0.100 | 0.500 ± 0.200 |'



def test_interpret_run_refuses_a_folder_that_is_not_a_run(sample_run, tmp_path):
    with pytest.raises(ConfigError, match='config.json'): interpret_run(sample_run[0], tmp_path)


def small_run(folder, lr_config: dict):
    "A run folder with only config.json, metrics.csv and maybe lr_find.png, as the report reads them"
    config = dict(data='sample', data_source='sample', epochs=3, bs=64, n_train=500, n_test=4, threads=2, device='cpu',
                  torch='2.x', processor='Test CPU', **lr_config)
    (folder / 'config.json').write_text(json.dumps(config))
    write_metrics(folder / 'metrics.csv', [dict(epoch=e, train_loss=1., train_accuracy=.5, test_loss=1.,
                                                test_accuracy=.1 * e, lr=.01, seconds=2.) for e in (1, 2)])
    if lr_config['lr'] == 'find': (folder / 'lr_find.png').write_bytes(b'')
    return folder


@pytest.mark.parametrize('lr_config, expected', [
    (dict(lr='find', found_lr=0.0123, lr_used=0.0123), ['suggested **0.0123**', '![LR range test](lr_find.png)']),
    (dict(lr='find', found_lr=0.0123, lr_used=0.0492, lr_mult=4., lr_find_iters=300),
     ['range test of 300 batches) suggested **0.0123**', 'training used 0.0492 (4 x the suggestion']),
    (dict(lr='find', found_lr=0.0123, lr_used=0.0492, lr_mult=4., lr_find_iters=None,  # the length followed the data
          lr_suggestions=dict(minimum=0.0123, lr=0.0492, suggestion='minimum', mult=4., num_it=35)),
     ['range test of 35 batches) suggested **0.0123** (rule: minimum; all rules: minimum 0.0123)']),
    (dict(lr='find', found_lr=0.01, lr_used=0.05, lr_mult=5.,  # a short test in which one rule found nothing
          lr_suggestions=dict(valley=None, minimum=0.01, lr=0.05, suggestion='minimum', mult=5., num_it=20)),
     ['(rule: minimum; all rules: valley found nothing, minimum 0.01)']),
    (dict(lr=0.05, found_lr=None, lr_used=0.05), ['Fixed learning rate 0.05'])])
def test_report_gives_the_learning_rate_and_how_it_was_chosen(tmp_path, lr_config, expected):
    p = Predictions(torch.eye(3)[[0, 1, 2, 0]], torch.tensor([0, 1, 2, 1]), ['cat', 'dog', 'frog'])
    text = write_report(small_run(tmp_path, lr_config), p).read_text()
    for s in expected: assert s in text
    assert '250.0 training images per second (500 / 2.0 s)' in text and 'Test CPU' in text
    assert '| 2 | 63.98 % | 20.00 % |' in text and '| 3 | 67.39 % | not run |' in text
    assert '(class_accuracy.png was not drawn' in text  # no picture link that would not resolve


def test_report_gives_each_epochs_flip_tta_accuracy_when_the_run_recorded_it(tmp_path):
    folder = small_run(tmp_path, dict(lr=0.05, found_lr=None, lr_used=0.05))
    write_metrics(folder / 'metrics.csv', [
        dict(epoch=e, train_loss=1., train_accuracy=.5, test_loss=1., test_accuracy=.1 * e,
             test_tta_accuracy=.1 * e + .005, lr=.01, seconds=2.) for e in (1, 2)])
    p = Predictions(torch.eye(3)[[0, 1, 2]], torch.tensor([0, 1, 2]), ['a', 'b', 'c'])
    text = write_report(folder, p).read_text()
    assert '| test accuracy | with flip TTA | learning rate |' in text
    assert '| 2 | 1.0000 | 50.00 % | 1.0000 | 20.00 % | 20.50 % | 0.01 | 2.0 |' in text


def test_summary_names_the_epochs_of_the_best_test_and_the_best_train_accuracy(tmp_path):
    folder = small_run(tmp_path, dict(lr=0.05, found_lr=None, lr_used=0.05))
    write_metrics(folder / 'metrics.csv', [  # test accuracy best at epoch 1, train accuracy at epoch 3, the last
        dict(epoch=e, train_loss=1., train_accuracy=train, test_loss=2., test_accuracy=test, lr=.01, seconds=2.)
        for e, train, test in [(1, .6, .3), (2, .8, .25), (3, .9, .2)]])
    text = write_report(folder, Predictions(torch.eye(2), torch.tensor([0, 1]), ['a', 'b'])).read_text()
    assert '| best test accuracy | 1 | 60.00 % | 30.00 % | 1.0000 | 2.0000 |' in text
    assert '| best train accuracy | 3 | 90.00 % | 20.00 % | 1.0000 | 2.0000 |' in text
    assert '| final | 3 | 90.00 % | 20.00 % | 1.0000 | 2.0000 |' in text


def test_accuracy_markdown_of_a_hand_computed_case():
    p = Predictions(torch.eye(3)[[0, 1, 2, 0]], torch.tensor([0, 1, 2, 1]), ['cat', 'dog', 'frog'])
    assert accuracy_markdown(p).splitlines()[2:] == ['| cat | 1 | 1 | 100.00 % |', '| dog | 2 | 1 | 50.00 % |',
                                                     '| frog | 1 | 1 | 100.00 % |',
                                                     '| **all** | 4 | 3 | **75.00 %** |']


def test_configuration_table_says_no_cutout_for_a_hole_of_0_and_its_size_otherwise():
    from cifar_fastai.report_md import _configuration
    assert '| augmentation | no crop, random horizontal flip, no cutout |' in _configuration(dict(pad=0, flip=True,
                                                                                                    cutout=0))
    assert 'random horizontal flip, cutout 8x8 with p 0.5 |' in _configuration(dict(flip=True, cutout=8, cutout_p=0.5))


@pytest.mark.parametrize('pad,flip,text', [(0, True, 'no crop, random horizontal flip, cutout 16x16'),
                                           (4, 'alternate', 'pad 4 (reflect) + random 32x32 crop, alternating horiz'),
                                           (4, False, 'crop, no flip, cutout')])
def test_configuration_table_names_the_crop_flip_label_smoothing_and_weight_average(pad, flip, text):
    from cifar_fastai.report_md import _configuration
    table = _configuration(dict(pad=pad, flip=flip, cutout=16, cutout_p=0.5, label_smoothing=0.1, ema=0.998,
                                ema_every=4, schedule='plateau'))
    assert text in table and '| label smoothing | 0.1 |' in table
    assert '| weight average | EMA, decay 0.998 per step, updated every 4 steps' in table
    assert '| weight average | none |' in _configuration(dict(pad=pad, ema=0.))
    lookahead = _configuration(dict(ema=0.99, lookahead=True))
    assert '| weight average | lookahead, decay rising to 0.99 per step' in lookahead
    assert '| optimizer | SGD, momentum 0.9 |' in _configuration(dict(momentum=0.9))  # runs saved before the option
    assert '| optimizer | SGD, Nesterov momentum 0.9, batch-norm biases at 64x the rate |' in _configuration(
        dict(momentum=0.9, nesterov=True, bn_bias_scale=64.))


def test_configuration_table_gives_the_plateau_floor_the_run_used():
    from cifar_fastai.report_md import _configuration
    table = _configuration(dict(schedule='plateau', plateau_factor=0.1, plateau_min_lr=None, plateau_min_lr_used=5e-6))
    assert ('ReduceLROnPlateau on test loss: factor 0.1, patience n/a, threshold n/a, cooldown n/a, min_lr 5e-06'
            in table)


PLATEAU = dict(schedule='plateau', epochs=6, plateau_factor=0.1, plateau_patience=1, plateau_threshold=1e-4,
               plateau_cooldown=0, plateau_min_lr_used=1e-6, lr_used=0.01, ema=0.998)


@pytest.mark.parametrize('losses, config, said', [
    # new lows at epochs 1, 2, 5: epochs 3 and 4 wait, more than patience 1, so the rate is cut after epoch 4
    ([1.0, 0.9, 0.95, 0.96, 0.8, 0.85], {}, "multiplied the rate by 0.1 after epoch 4, when the test loss (the weight "
                                           "average's) had not set a new low (by more than 0.01% of itself) for more "
                                           "than 1 epoch."),
    ([1.0, 0.9, 0.95, 0.8, 0.85, 0.7], dict(valid_pct=0.1, ema=0.), "never cut the rate: the held-out loss went at "
                                                                    "most 1 epoch without a new low"),
    ([1.0, 0.9, 0.8, 0.7, 0.6, 0.5], dict(anneal=0.2), "set a new low (by more than 0.01% of itself) every epoch. "
                                                       "The final decay (`--anneal 0.2`) took the rate down to 0"),
    # a cut due after the last epoch changes no epoch's rate
    ([1.0, 0.9, 0.8, 0.7, 0.75, 0.76], {}, "never cut the rate")])
def test_report_says_when_the_plateau_cut_the_rate(losses, config, said):
    from cifar_fastai.report_md import _plateau_acts
    split = 'valid' if config.get('valid_pct') else 'test'
    rows = [{'epoch': e, f'{split}_loss': loss} for e, loss in enumerate(losses, 1)]
    assert said in _plateau_acts({**PLATEAU, **config}, rows)


def test_report_of_a_one_cycle_run_says_nothing_of_a_plateau():
    from cifar_fastai.report_md import _plateau_acts
    assert _plateau_acts({**PLATEAU, 'schedule': 'one-cycle'}, [{'epoch': 1, 'test_loss': 1.}]) == ''


@pytest.mark.parametrize('kwargs,named', [(dict(faithfulness_images=-1), 'faithfulness_images'),
                                          (dict(faithfulness_steps=0), 'faithfulness_steps'), (dict(cam='cam'), 'cam')])
@pytest.mark.parametrize('write', [interpret_run, gradcam_run])
def test_bad_map_settings_are_refused_before_the_test_set_is_predicted(write, kwargs, named, tmp_path, monkeypatch):
    (tmp_path / 'config.json').write_text('{}')
    monkeypatch.setattr('cifar_fastai.report.predict', lambda *a, **k: pytest.fail('the test set was predicted'))
    with pytest.raises(ValueError, match=named): write(None, tmp_path, **kwargs)
