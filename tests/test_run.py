"A run folder holds everything a run made; the command line rejects bad options before touching data"
import json
import re

import numpy as np
import pytest
import torch
from fastai.learner import load_learner
from fastai.vision.core import PILImage

from cifar_fastai import cli
from cifar_fastai.callbacks import format_row, read_metrics, time_left
from cifar_fastai.data import read_cifar10
from cifar_fastai.evaluate import load_run, predict
from cifar_fastai.interpret import plot_misclassified, top_mistakes
from cifar_fastai.models import resnet18
from cifar_fastai.run import RunConfig, _plan, train
from tests.test_data import write_folders
from tests.test_interpret import png_pixels


def test_a_run_writes_every_file(sample_run):
    _, run = sample_run
    for name in ('config.json', 'metrics.csv', 'lr_find.png', 'model.pth', 'export.pkl', 'checkpoint.pth'):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    checkpoint = torch.load(run / 'checkpoint.pth', weights_only=True)
    assert checkpoint['epoch'] == 2 and checkpoint['partial'] is None  # both epochs, none left half done
    for saved, written in zip(checkpoint['rows'], read_metrics(run / 'metrics.csv'), strict=True):
        assert written == pytest.approx(saved, rel=1e-5)  # the csv keeps 6 digits
    assert len(np.unique(png_pixels(run / 'lr_find.png').reshape(-1, 3), axis=0)) > 16  # a plot, not a blank page


def test_config_records_the_options_the_found_lr_and_versions(sample_run):
    learn, run = sample_run
    config = json.loads((run / 'config.json').read_text())
    assert config['epochs'] == 2 and config['lr'] == 'find' and config['schedule'] == 'plateau'
    assert config['found_lr'] == config['lr_suggestions']['minimum'] > 0 and config['lr_mult'] == 5
    assert config['lr_used'] == pytest.approx(5 * config['found_lr'], rel=1e-12)
    assert config['torch'] == torch.__version__ and config['n_train'] == 500 and config['n_test'] == 200
    assert config['plateau_min_lr'] is None and config['plateau_min_lr_used'] == pytest.approx(config['lr_used'] / 1000)
    assert config['data_source'].startswith('bundled sample')


def test_metrics_has_one_row_per_epoch_with_the_lr_used(sample_run):
    learn, run = sample_run
    rows = read_metrics(run / 'metrics.csv')
    # no split held out of train: the test split validates, and there are no valid_* columns
    header = ['epoch', 'train_loss', 'train_accuracy', 'test_loss', 'test_accuracy', 'lr', 'seconds']
    assert (run / 'metrics.csv').read_text().splitlines()[0].split(',') == header
    assert [r['epoch'] for r in rows] == [1, 2]
    # 500 images in batches of 64: 7 steps an epoch, 14 in all; the warm-up is round(5 % of 14) = 1 step at the full
    # rate, the final decay the last round(20 % of 14) = 3 steps at 3/4, 2/4 and 1/4 of it
    lr_used = json.loads((run / 'config.json').read_text())['lr_used']
    assert [r['lr'] for r in rows] == pytest.approx([lr_used, lr_used * (4 + 3 / 4 + 2 / 4 + 1 / 4) / 7], rel=1e-5)
    assert all(0 <= r['test_accuracy'] <= 1 and r['seconds'] > 0 for r in rows)


def test_weights_are_a_plain_state_dict_that_reproduces_the_test_accuracy(sample_run):
    _, run = sample_run
    model = resnet18()
    model.load_state_dict(torch.load(run / 'model.pth', weights_only=True))
    data = read_cifar10('sample')
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2470, 0.2435, 0.2616])
    x = (torch.from_numpy(data.test_x).float() / 255 - mean) / std
    with torch.no_grad(): preds = model.eval()(x.permute(0, 3, 1, 2)).argmax(1)
    accuracy = (preds == torch.from_numpy(data.test_y)).float().mean().item()
    assert accuracy == pytest.approx(read_metrics(run / 'metrics.csv')[-1]['test_accuracy'], abs=0.011)  # bf16 vs fp32


def test_export_loads_with_load_learner_and_predicts_an_image(sample_run, tmp_path):
    _, run = sample_run
    learn = load_learner(run / 'export.pkl')  # a pickle: only for files you made yourself
    image = read_cifar10('sample').test_x[0]
    PILImage.create(image).save(tmp_path / 'image.png')
    results = [learn.predict(item) for item in (image, PILImage.create(image), tmp_path / 'image.png')]
    category, idx, probs = results[0]
    assert category in learn.dls.vocab and probs.shape == (10,) and probs.sum().item() == pytest.approx(1, abs=1e-4)
    assert all(torch.equal(r[2], probs) for r in results)
    assert (run / 'export.pkl').stat().st_size < 60e6  # the pixels of the data set are not in it


def test_gradcam_into_a_file_prints_only_the_paths_it_wrote(sample_run, tmp_path, capsys):
    _, run = sample_run
    copy = tmp_path / 'run'
    copy.mkdir()
    for name in ('config.json', 'metrics.csv', 'model.pth'): (copy / name).write_bytes((run / name).read_bytes())
    cli.main(['gradcam', str(copy), '--cam', 'layercam', '--faithfulness-images', '2', '--faithfulness-steps', '2'])
    written = ('misclassified.png', 'gradcam.png', 'faithfulness.md')  # no report.md here to update
    assert capsys.readouterr().out.splitlines() == [f'wrote {copy / n}' for n in written]  # captured: not a terminal
    assert '| layer1 | LayerCAM |' in (copy / 'faithfulness.md').read_text()
    learn = load_run(copy)
    p = predict(learn)  # the grid of the 25 most confident mistakes among the test images
    plot_misclassified(learn, p, top_mistakes(p, 25), tmp_path / 'misclassified.png')
    assert np.array_equal(png_pixels(copy / 'misclassified.png'), png_pixels(tmp_path / 'misclassified.png'))


def test_evaluate_prints_per_class_and_overall_accuracy(sample_run, capsys):
    _, run = sample_run
    cli.main(['evaluate', str(run)])
    out = capsys.readouterr().out
    assert all(f'Accuracy of {c:>10s}' in out for c in read_cifar10('sample').classes)
    overall = float(out.split('test images:')[1].split('%')[0])
    assert overall == pytest.approx(100 * read_metrics(run / 'metrics.csv')[-1]['test_accuracy'], abs=1.1)


def test_evaluate_tta_prints_the_accuracy_of_the_averaged_prediction(sample_run, capsys):
    learn, run = sample_run
    cli.main(['evaluate', str(run), '--tta'])
    tta = float(capsys.readouterr().out.split('test-time augmentation:')[1].split('%')[0])
    assert tta == pytest.approx(100 * predict(learn, tta=True).accuracy, abs=0.51)  # 1 of the 200 test images


def test_evaluate_tta_translate_prints_the_six_view_accuracy(sample_run, capsys):
    learn, run = sample_run
    cli.main(['evaluate', str(run), '--tta-translate'])
    out = capsys.readouterr().out
    tta = float(out.split('With flip and 1-pixel translation test-time augmentation:')[1].split('%')[0])
    assert tta == pytest.approx(100 * predict(learn, tta='translate').accuracy, abs=0.51)  # 1 of the 200 test images


@pytest.mark.parametrize('argv,message', [
    (['train', '--epochs', '0'], '--epochs'), (['train', '--epochs', '-3'], '--epochs'),
    (['train', '--bs', '0'], '--bs'), (['train', '--lr', '-0.1'], '--lr'), (['train', '--lr', 'fast'], '--lr'),
    (['train', '--precision', 'fp8'], '--precision'), (['train', '--schedule', 'cosine'], '--schedule'),
    (['train', '--label-smoothing', '1'], '--label-smoothing'),
    (['train', '--plateau-patience', '-1'], '--plateau-patience'),
    (['train', '--ema', '1'], '--ema'), (['train', '--ema', '-0.5'], '--ema'),
    (['train', '--ema-every', '0'], '--ema-every'),
    (['train', '--valid-pct', '1'], '--valid-pct'), (['train', '--anneal', '1.5'], '--anneal'),
    (['train', '--warmup', '0.6', '--anneal', '0.6'], '--warmup'),
    (['train', '--lr-find-iters', '0'], '--lr-find-iters'), (['train', '--lr-mult', '0'], '--lr-mult'),
    (['train', '--bn-bias-scale', '0'], '--bn-bias-scale'), (['train', '--lookahead', '--ema', '0'], '--lookahead'),
    (['train', '--momentum', '1'], '--momentum'),
    (['train', '--schedule', 'one-cycle', '--momentum', '0.97'], '--momentum'),
    (['train', '--cutout-p', '1.5'], '--cutout-p'), (['train', '--cutout', '-1'], '--cutout'),
    (['train', '--cutout', '33'], '--cutout'), (['train', '--seed', '-1'], '--seed'),
    (['train', '--workers', '-1'], '--workers'),
    (['train', '--pad', '-1'], '--pad'),
    (['train', '--plateau-cooldown', '-1'], '--plateau-cooldown'),
    (['train', '--plateau-threshold', '-0.1'], '--plateau-threshold'),
    (['train', '--resume', 'no-such-run'], 'not a run folder'), (['lr-find', '--bs', '-1'], '--bs'),
    (['gradcam', 'RUN', '--faithfulness-images', '-1'], '--faithfulness-images'),
    (['interpret', 'RUN', '--faithfulness-steps', '0'], '--faithfulness-steps')])
def test_bad_options_exit_2_with_one_line_before_loading_data(argv, message, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    for where in ('cifar_fastai.loaders', 'cifar_fastai.run'):
        monkeypatch.setattr(f'{where}.read_cifar10', lambda *a, **k: pytest.fail('data was loaded'))
    with pytest.raises(SystemExit) as e: cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and message in err[-1]
    assert not (tmp_path / 'runs').exists()


def _stopped(argv, capsys) -> str:
    "The last line `cifar-fastai` prints when its command ends on Ctrl-C"
    with pytest.raises(SystemExit) as e: cli.main(argv)
    message = e.value.code if isinstance(e.value.code, str) else capsys.readouterr().err
    return message.strip().splitlines()[-1]


def test_ctrl_c_while_the_data_loads_keeps_no_folder_and_says_to_start_again(monkeypatch, tmp_path, capsys):
    def interrupt(*a, **k): raise KeyboardInterrupt
    monkeypatch.setattr('cifar_fastai.run.read_cifar10', interrupt)
    line = _stopped(['train', '--data', 'sample', '--out', str(tmp_path / 'run')], capsys)
    assert line == 'Interrupted before training started: nothing was kept; run the same command again'
    assert not (tmp_path / 'run').exists()


def test_ctrl_c_after_the_run_started_says_how_to_resume(monkeypatch, tmp_path, capsys):
    def started_then_interrupted(config, out, **k):
        out.mkdir(); (out / 'config.json').write_text('{}')  # the range test is done: the run can go on
        raise KeyboardInterrupt
    monkeypatch.setattr('cifar_fastai.run.train', started_then_interrupted)
    run = tmp_path / 'run'
    line = _stopped(['train', '--data', 'sample', '--out', str(run)], capsys)
    assert line.endswith(f'continue with: cifar-fastai train --resume {run}')


def test_ctrl_c_while_drawing_after_training_says_how_to_draw_the_pictures(monkeypatch, tmp_path, capsys):
    run = tmp_path / 'run'
    def trained(config, out, **k): out.mkdir(); (out / 'config.json').write_text('{"interpret": true}')
    def interrupt(learn, out): raise KeyboardInterrupt
    monkeypatch.setattr('cifar_fastai.run.train', trained)
    monkeypatch.setattr('cifar_fastai.run.read_config', lambda out: {'interpret': True})
    monkeypatch.setattr(cli, '_interpret', interrupt)
    line = _stopped(['train', '--data', 'sample', '--out', str(run)], capsys)
    assert line.endswith(f'Draw them with: cifar-fastai interpret {run}')


def test_ctrl_c_in_another_command_ends_in_one_line(monkeypatch, tmp_path, capsys):
    def interrupt(*a, **k): raise KeyboardInterrupt
    monkeypatch.setattr('cifar_fastai.evaluate.load_run', interrupt)
    assert _stopped(['evaluate', str(tmp_path)], capsys).startswith('Interrupted; each file written so far is whole')


def test_lr_find_into_a_run_folder_is_refused_before_reading_data(tmp_path, monkeypatch, capsys):
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'config.json').write_text('{}')
    monkeypatch.setattr('cifar_fastai.run.read_cifar10', lambda *a, **k: pytest.fail('data was loaded'))
    with pytest.raises(SystemExit) as e: cli.main(['lr-find', '--out', str(run)])
    assert e.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1].endswith(
        f"{run} holds a training run: lr-find would write its lr_find.png and lr_find.json there; choose another --out")
    assert sorted(p.name for p in run.iterdir()) == ['config.json']


def test_without_progress_bars_a_run_logs_one_line_per_epoch_matching_metrics(tmp_path, capsys):
    lines = []
    learn = train(RunConfig(data='sample', epochs=2, bs=100, lr=0.02, interpret=False), tmp_path / 'run',
                  log=lines.append, progress=False)
    rows, written = learn.epoch_record.rows, read_metrics(tmp_path / 'run' / 'metrics.csv')
    epoch_lines = [l for l in lines if l.startswith('epoch ')]
    assert re.fullmatch(re.escape(format_row(rows[0], 2)) + r' \| about \d+ min left', epoch_lines[0])
    assert epoch_lines[1] == format_row(rows[1], 2)  # the last epoch: nothing left
    for row, back in zip(rows, written, strict=True):  # the csv keeps 6 digits
        assert back == pytest.approx(row, rel=1e-5)
    assert epoch_lines[0].startswith('epoch 1/2: train loss ')
    assert capsys.readouterr().out == ''  # neither fastai's bars nor its print of each epoch's values


def test_without_progress_bars_decoding_a_folder_prints_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    write_folders(tmp_path / 'data', classes=('cat', 'dog'), n=8)
    lines = []
    train(RunConfig(data=str(tmp_path / 'data'), epochs=1, bs=4, lr=0.02, interpret=False), tmp_path / 'run',
          log=lines.append, progress=False)
    assert capsys.readouterr().out == ''  # the decoding bar of 16 + 16 images follows the run's bars
    assert lines[0] == f"Data: class folders in {tmp_path / 'data'}: 16 train and 16 test images"


def test_format_row_reads_like_the_progress_table():
    row = dict(epoch=3, train_loss=1.23456, train_accuracy=0.5, test_loss=0.98765, test_accuracy=0.7054, lr=0.0057544,
               seconds=389.6)
    assert format_row(row, 5) == ('epoch 3/5: train loss 1.2346 accuracy 50.00% | test loss 0.9877 accuracy 70.54% | '
                                  'lr 0.00575 | 390 s')


@pytest.mark.parametrize('epochs,done,partial,plan', [
    (20, 0, None, '20 epochs'), (20, 15, None, 'epochs 16 to 20'),
    (20, 19, {'batch': 9}, 'epoch 20 (20 from its batch 10)'), (20, 20, None, 'no epochs (all 20 done)')])
def test_the_training_line_says_what_is_left(epochs, done, partial, plan):
    assert _plan(epochs, done, partial) == plan


@pytest.mark.parametrize('seconds,n_epoch,left', [
    ([600, 300, 330, 360], 10, ' | about 33 min left'),   # 6 epochs at 330 s, the median of the last three
    ([360, 744, 378], 50, ' | about 4 h 56 min left'),    # 47 at 378 s, not at the mean 494 s (6 h 27 min)
    ([300, 420], 5, ' | about 18 min left'),              # 3 at 360 s, the median of two
    ([4000], 3, ' | about 2 h 13 min left'),              # 2 x 4000 s = 133.3 min
    ([5, 5], 3, ' | about 1 min left'),                    # 5 s: said as a minute, never as 0
    ([300, 300, 300], 3, '')])                            # the last epoch
def test_the_epoch_line_says_how_long_the_rest_of_the_run_takes(seconds, n_epoch, left):
    rows = [dict(epoch=i + 1, seconds=s) for i, s in enumerate(seconds)]
    assert time_left(rows, n_epoch) == left


@pytest.mark.parametrize('argv,patience', [
    (['train', '--epochs', '5'], 0), (['train', '--epochs', '19'], 1), (['train'], 5),
    (['train', '--epochs', '5', '--plateau-patience', '3'], 3)])
def test_plateau_patience_defaults_to_a_tenth_of_the_epochs(argv, patience):
    assert cli._config(cli.parser().parse_args(argv)).plateau_patience == patience


@pytest.mark.parametrize('argv,nesterov,smoothing', [
    (['train'], True, 0.2), (['train', '--schedule', 'one-cycle'], False, 0.),
    (['train', '--schedule', 'linear'], True, 0.2), (['train', '--schedule', 'one-cycle', '--nesterov'], True, 0.),
    (['train', '--no-nesterov', '--label-smoothing', '0'], False, 0.),
    (['train', '--schedule', 'linear', '--no-nesterov', '--label-smoothing', '0'], False, 0.)])
def test_all_but_one_cycle_bring_nesterov_and_label_smoothing_unless_told_otherwise(argv, nesterov, smoothing):
    config = cli._config(cli.parser().parse_args(argv))
    assert (config.nesterov, config.label_smoothing) == (nesterov, smoothing)


def test_a_run_whose_rate_bottoms_out_ends_says_so_and_stays_ended_on_resume(tmp_path, monkeypatch):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    write_folders(tmp_path / 'data', classes=('cat', 'dog'), n=8)
    # threshold 0.99: only epoch 1 counts as better; the cut after epoch 2 reaches the floor, the next one is due there
    config = dict(data=str(tmp_path / 'data'), epochs=8, bs=4, lr=0.02, plateau_patience=0, plateau_threshold=0.99,
                  plateau_min_lr=0.002, warmup=0., anneal=0., interpret=False)  # the plateau's rates alone
    runs = [[], []]
    for resume, lines in zip((False, True), runs):
        train(RunConfig(**config), tmp_path / 'run', resume=resume, log=lines.append, progress=False)
        assert [r['lr'] for r in read_metrics(tmp_path / 'run' / 'metrics.csv')] == pytest.approx([0.02, 0.02, 0.002])
    stop = ('Stopped after epoch 3 of 8: the test loss stopped improving with the learning rate at its floor, 0.002 '
            '(--plateau-min-lr)')
    assert runs[0][-1] == runs[1][-1] == stop


def test_a_start_refused_after_making_its_folder_leaves_no_empty_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    kept = tmp_path / 'kept'
    kept.mkdir()
    for out in ('runs/new', 'kept'):  # the sample has 500 training images
        with pytest.raises(SystemExit) as e: cli.main(['train', '--data', 'sample', '--bs', '512', '--out', out])
        assert e.value.code == 2 and capsys.readouterr().err.strip().endswith('; give --bs 500 or less')
    assert not (tmp_path / 'runs' / 'new').exists() and (tmp_path / 'runs').is_dir()
    assert kept.is_dir()  # a folder the user made stays, empty as it was


def test_alternate_flip_is_an_option_a_run_keeps_and_trains_with(tmp_path, monkeypatch):
    assert cli._config(cli.parser().parse_args(['train', '--alternate-flip'])).flip == 'alternate'
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    write_folders(tmp_path / 'data', classes=('cat', 'dog'), n=8)
    config = RunConfig(data=str(tmp_path / 'data'), epochs=1, bs=4, lr=0.02, flip='alternate', cutout=16,
                       interpret=False)
    learn = train(config, tmp_path / 'run', log=lambda *a: None, progress=False)
    (tfm,) = learn.dls.train.after_item.fs
    assert tfm.alternate is not None and tfm.alternate.seed == config.seed
    assert [type(t).__name__ for t in tfm.train_aug.transforms] == ['CoarseDropout']  # no random flip besides
    assert json.loads((tmp_path / 'run' / 'config.json').read_text())['flip'] == 'alternate'


def test_evaluating_a_run_that_has_not_finished_says_how_to_finish_it(sample_run, tmp_path, capsys):
    _, finished = sample_run
    run = tmp_path / 'unfinished'
    run.mkdir()
    (run / 'config.json').write_text((finished / 'config.json').read_text())  # started, never reached its end
    line = _stopped(['evaluate', str(run)], capsys)
    assert line == (f"cifar-fastai: error: {run / 'model.pth'} does not exist: the run has not finished training; "
                    f"finish it with: cifar-fastai train --resume {run}")


def _copy_run(run, to, **record):
    "A copy of run folder `run`'s options and weights at `to`, with `record` changed in its config.json"
    to.mkdir()
    (to / 'model.pth').write_bytes((run / 'model.pth').read_bytes())
    (to / 'config.json').write_text(json.dumps({**json.loads((run / 'config.json').read_text()), **record}))
    return to


def test_evaluating_on_data_of_other_classes_names_data_not_the_weights(sample_run, tmp_path, capsys):
    write_folders(tmp_path / 'pets')  # cat and dog: not the ten classes the sample run learnt
    run = _copy_run(sample_run[1], tmp_path / 'run')
    line = _stopped(['evaluate', str(run), '--data', str(tmp_path / 'pets')], capsys)
    assert line.endswith(f"--data {tmp_path / 'pets'} holds the classes ['cat', 'dog'], but {run} was trained on "
                         f"{read_cifar10('sample').classes}: pass the data it was trained on")


def test_a_run_whose_data_moved_says_to_pass_data(sample_run, tmp_path, capsys):
    gone = tmp_path / 'moved-away'
    run = _copy_run(sample_run[1], tmp_path / 'run', data=str(gone), data_source=f'class folders in {gone}')
    line = _stopped(['evaluate', str(run)], capsys)
    assert line == (f"cifar-fastai: error: {gone}, the data {run / 'config.json'} records, does not exist: pass "
                    f"--data PATH to read it from where it is now")


def test_evaluate_takes_fewer_test_images_than_a_batch_and_prints_no_bar_in_a_file(sample_run, tmp_path, capsys):
    classes = read_cifar10('sample').classes
    write_folders(tmp_path / 'few', classes=tuple(classes))  # 2 test images a class: 20, under the run's batch of 64
    cli.main(['evaluate', str(_copy_run(sample_run[1], tmp_path / 'run')), '--data', str(tmp_path / 'few')])
    out = capsys.readouterr().out.splitlines()  # not a terminal: no progress bar among them
    assert [line.split(':')[0].split()[-1] for line in out[:10]] == classes and len(out) == 11
    assert out[-1].startswith('Accuracy on the 20 test images: ')


def test_lr_find_on_missing_data_leaves_no_empty_folder(tmp_path, capsys):
    out = tmp_path / 'runs' / 'lr'
    line = _stopped(['lr-find', '--data', str(tmp_path / 'nowhere'), '--out', str(out)], capsys)
    assert line.startswith(f"cifar-fastai: error: {tmp_path / 'nowhere'} does not exist") and not out.exists()


def test_lr_find_writes_its_plot_and_suggestions_and_prints_the_rate_train_would_use(tmp_path, capsys):
    out = tmp_path / 'lr'
    cli.main(['lr-find', '--data', 'sample', '--lr-find-iters', '12', '--bs', '50', '--out', str(out)])
    found = json.loads((out / 'lr_find.json').read_text())
    assert sorted(p.name for p in out.iterdir()) == ['lr_find.json', 'lr_find.png']
    assert found['lr'] == pytest.approx(5 * found['minimum'])  # the plateau default trains at 5x 'minimum'
    said = capsys.readouterr().out.strip().splitlines()[-1]
    assert said.startswith(f"lr_find suggests {found['minimum']:.3g} (minimum); `train` would use 5 x that = "
                           f"{found['lr']:.3g}") and said.endswith(f"plot in {out / 'lr_find.png'}")
