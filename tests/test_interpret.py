"Specifications of the interpretation pictures: accuracy per class, chosen mistakes, grids, fastai's plots, curves"

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image

from cifar_fastai.callbacks import write_metrics
from cifar_fastai.evaluate import Predictions, class_accuracy, predict
from cifar_fastai.gradcam import LayerCAM, overlay
from cifar_fastai.interpret import (STAGES, PredictionsInterpretation, as_batch, measure_faithfulness,
                                    plot_class_accuracy, plot_confusion_matrix, plot_gradcam, plot_misclassified,
                                    plot_top_losses, top_mistakes)
from cifar_fastai.loaders import cifar_dls, ds_idx_of_test
from cifar_fastai.plots import plot_augmentations, plot_curves
from cifar_fastai.report import accuracy_markdown, interpret_run
from cifar_fastai.run import RunConfig, train
from cifar_fastai.transforms import cifar_augs
from tests.helpers import synthetic_cifar


def hand_predictions(probs, targets, classes=('a', 'b', 'c')) -> Predictions:
    return Predictions(torch.tensor(probs, dtype=torch.float32), torch.tensor(targets), list(classes))


# targets 0 0 1 1 2 2, predicted 0 1 1 1 0 2: accuracy a 1/2, b 2/2, c 1/2; wrong: item 1 (p .6), item 4 (p .9)
HAND = dict(probs=[[.8, .1, .1], [.3, .6, .1], [.2, .7, .1], [.1, .5, .4], [.9, .05, .05], [.2, .2, .6]],
            targets=[0, 0, 1, 1, 2, 2])


@pytest.fixture(scope='module')
def preds(sample_run):
    return predict(sample_run[0])


@pytest.fixture(scope='module')
def held_out_run(tmp_path_factory):
    "A 2-epoch run on the sample with a fifth of train held out to validate on, interpreted: (learn, run folder)"
    run = tmp_path_factory.mktemp('held_out') / 'run'
    # plain cross-entropy, where `sample_run` has the default's label smoothing: the top losses are checked at both
    config = RunConfig(data='sample', valid_pct=0.2, epochs=2, bs=64, lr=0.01, ema=0., label_smoothing=0.,
                       interpret=False)
    learn = train(config, run, log=lambda *a: None, progress=False)
    interpret_run(learn, run, k=4, faithfulness_images=2, faithfulness_steps=2)
    return learn, run


def test_class_accuracy_of_a_hand_computed_case():
    p = hand_predictions(**HAND)
    assert class_accuracy(p) == pytest.approx({'a': 0.5, 'b': 1.0, 'c': 0.5})
    assert p.accuracy == pytest.approx(4 / 6)


def test_class_accuracy_figure_has_a_bar_per_class_and_the_overall_accuracy_in_its_title(tmp_path):
    fig = plot_class_accuracy(hand_predictions(**HAND), tmp_path / 'acc.png')
    ax, = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ['a', 'b', 'c']
    assert [b.get_width() for b in ax.patches] == pytest.approx([50, 100, 50])
    assert '66.67 %' in ax.get_title()


@pytest.mark.parametrize('k, expected', [(1, [4]), (2, [4, 1]), (25, [4, 1]), (0, [])])
def test_top_mistakes_are_the_most_confident_wrong_predictions_first(k, expected):
    assert top_mistakes(hand_predictions(**HAND), k).tolist() == expected


def test_top_mistakes_random_is_seeded_and_first_keeps_test_order():
    p = hand_predictions(torch.full((50, 3), 1 / 3).tolist(), [1] * 50)  # argmax 0: every image wrong
    a, b = (top_mistakes(p, 10, 'random', seed=3).tolist() for _ in range(2))
    assert a == b and len(set(a)) == 10 and a != list(range(10))
    assert top_mistakes(p, 5, 'first').tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize('kwargs, word', [(dict(order='best'), 'order'), (dict(k=-1), 'k')])
def test_top_mistakes_rejects_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word): top_mistakes(hand_predictions(**HAND), **kwargs)


@pytest.mark.parametrize('valid_pct', [0., 0.1])  # the test split is dls.valid, or dls[2] beside a held-out split
def test_test_loader_order_and_normalisation_equal_the_test_arrays(valid_pct):
    dls = cifar_dls('sample', bs=32, val_bs=64, valid_pct=valid_pct)
    xs, ys = zip(*dls[ds_idx_of_test(dls)])
    assert torch.equal(torch.cat(ys).cpu(), torch.as_tensor(dls.data.test_y, dtype=torch.long))
    assert torch.equal(torch.cat(xs), as_batch(dls, dls.data.test_x))  # same images, same order, same normalisation


def test_predictions_are_in_test_array_order(sample_run, preds):
    assert preds.targets.tolist() == sample_run[0].dls.data.test_y.tolist()


def png_pixels(path) -> np.ndarray:
    with Image.open(path) as im: return np.asarray(im.convert('RGB'))


def check_png(fig, path):
    "`fig` came back and `path` holds a drawing, not a blank page"
    assert isinstance(fig, Figure)
    assert len(np.unique(png_pixels(path).reshape(-1, 3), axis=0)) > 16  # more colours than background and text


def test_misclassified_grid_titles_each_image_true_predicted_probability(sample_run, preds, tmp_path):
    learn, idxs = sample_run[0], list(range(25))
    fig = plot_misclassified(learn, preds, idxs, tmp_path / 'm.png')
    check_png(fig, tmp_path / 'm.png')
    assert len(fig.axes) == 25
    t, y = int(preds.targets[7]), int(preds.preds[7])
    assert fig.axes[7].get_title() == f'{preds.classes[t]}/{preds.classes[y]} ({preds.probs[7, y]:.2f})'
    assert np.array_equal(fig.axes[7].images[0].get_array(), learn.dls.data.test_x[7])  # raw uint8 test image


def test_gradcam_grid_has_the_image_then_the_predicted_and_true_class_maps_per_stage(sample_run, preds, tmp_path):
    learn, idxs = sample_run[0], top_mistakes(preds, 3)
    fig = plot_gradcam(learn, preds, idxs, path=tmp_path / 'g.png')  # LayerCAM unless asked
    check_png(fig, tmp_path / 'g.png')
    assert len(fig.axes) == 3 * (1 + 2 * len(STAGES))
    titles = ['image', 'layer1\npredicted', 'layer1\ntrue', 'layer2\npredicted', 'layer2\ntrue']
    assert [ax.get_title() for ax in fig.axes[:5]] == titles
    assert fig._suptitle.get_text().startswith('LayerCAM of the predicted class and, beside it, of the true class')
    images = learn.dls.data.test_x[idxs.tolist()]
    for targets, column in ((preds.preds[idxs], 7), (preds.targets[idxs], 8)):  # layer4, predicted then true
        with LayerCAM(learn.model, ['layer4']) as cam: (maps,) = cam(as_batch(learn.dls, images), targets)
        row = fig.axes[2 * (1 + 2 * len(STAGES)) + column].images[0].get_array()  # the third image
        np.testing.assert_allclose(row, overlay(images[2], maps[2].cpu()), atol=1e-5)
    assert not learn.model.training  # the map restored the mode it found


def test_faithfulness_of_test_images_scores_every_method_and_random_maps_per_stage(sample_run, preds):
    rows = measure_faithfulness(sample_run[0], preds, n=3, steps=2, layers=['layer4'], methods=['gradcam'])
    assert [(r['layer'], r['method']) for r in rows] == [('layer4', 'gradcam'), ('layer4', 'random')]
    assert all(r['deletion'].shape == (3,) and ((0 <= r['insertion']) & (r['insertion'] <= 1)).all() for r in rows)
    with pytest.raises(ValueError, match='test images'): measure_faithfulness(sample_run[0], preds, n=0)


@pytest.mark.parametrize('run', ['sample_run', 'held_out_run'])  # the test split is dls[1], or dls[2]
def test_interpretation_reuses_predictions_and_matches_fastai_on_the_test_split(run, request):
    from fastai.interpret import ClassificationInterpretation
    learn = request.getfixturevalue(run)[0]
    ours = PredictionsInterpretation(learn, predict(learn))
    # fastai predicts the test split again, our fit-only callbacks staying out of its get_preds
    fastai = ClassificationInterpretation.from_learner(learn, ds_idx=ds_idx_of_test(learn.dls))
    assert np.array_equal(ours.confusion_matrix(), fastai.confusion_matrix())
    assert torch.allclose(ours.losses, fastai.losses.float(), atol=1e-3)


def test_interpretation_refuses_a_loader_that_the_predictions_were_not_made_on(held_out_run):
    learn = held_out_run[0]
    with pytest.raises(ValueError, match='100 images but `p` predicts 200'):
        PredictionsInterpretation(learn, predict(learn), dl=learn.dls.valid)  # the held-out split


def test_confusion_matrix_counts_test_images_by_actual_row_and_predicted_column(sample_run, preds, tmp_path):
    fig = plot_confusion_matrix(PredictionsInterpretation(sample_run[0], preds), tmp_path / 'cm.png')
    check_png(fig, tmp_path / 'cm.png')
    ax, = [ax for ax in fig.axes if ax.get_visible()]
    counts = np.zeros((10, 10), dtype=int)
    for t, y in zip(preds.targets.tolist(), preds.preds.tolist()): counts[t, y] += 1
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): int(t.get_text()) for t in ax.texts}
    assert cells == {(i, j): counts[i, j] for i in range(10) for j in range(10)}
    assert ax.get_title() == 'Confusion matrix, 200 test images'
    assert [t.get_text() for t in ax.get_yticklabels()] == list(sample_run[0].dls.data.classes)


@pytest.mark.parametrize('run', ['sample_run', 'held_out_run'])
def test_top_losses_show_the_test_images_of_largest_loss_titled_with_their_test_labels(run, request, tmp_path):
    learn = request.getfixturevalue(run)[0]
    data, p = learn.dls.data, predict(learn)
    interp = PredictionsInterpretation(learn, p)
    n_train = len(data.train_y)  # items index the training images, then the test images
    assert list(interp.dl.items) == list(range(n_train, n_train + len(data.test_y)))
    fig = plot_top_losses(interp, 4, tmp_path / 'top.png')
    check_png(fig, tmp_path / 'top.png')
    losses, idxs = interp.top_losses(4)
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(shown) == 4
    for ax, i, loss in zip(shown, idxs.tolist(), losses.tolist(), strict=True):
        names, shown_loss, probability = ax.get_title().split(' / ')  # predicted/actual / loss / probability
        assert names == f'{data.classes[int(p.preds[i])]}/{data.classes[data.test_y[i]]}'
        assert shown_loss == f'{loss:.2f}' and float(probability) == pytest.approx(p.probs[i].max().item(), abs=0.006)
        # the learner's loss: cross-entropy with its label smoothing eps, (1 - eps) -log p_true + eps mean_k -log p_k
        eps, log_p = learn.loss_func.func.label_smoothing, p.probs[i].double().log()
        assert loss == pytest.approx(-(1 - eps) * log_p[data.test_y[i]].item() - eps * log_p.mean().item(), rel=1e-4)
        # decoded from the normalised floats: a pixel may come back 1 lower
        difference = ax.images[0].get_array().astype(int) - data.test_x[i]
        assert difference.min() >= -1 and difference.max() <= 0


def test_a_held_out_run_reports_on_the_test_split(held_out_run, tmp_path):
    learn, run = held_out_run
    p = predict(learn)
    report = (run / 'report.md').read_text()
    assert '100 training images (20% of each class) were held out to validate on' in report
    assert accuracy_markdown(p) in report and 'of the 200 test images' in report
    assert '![test images with the largest loss](top_losses.png)' in report
    # the run's pictures are these, drawn from the predictions of the test split
    interp = PredictionsInterpretation(learn, p)
    plot_top_losses(interp, path=tmp_path / 'top_losses.png')
    plot_misclassified(learn, p, top_mistakes(p, 4), tmp_path / 'misclassified.png')
    for name in ('top_losses.png', 'misclassified.png'):
        assert np.array_equal(png_pixels(run / name), png_pixels(tmp_path / name)), name


def test_curves_plot_accuracy_loss_and_log_lr_from_a_metrics_csv(tmp_path):
    rows = [dict(epoch=e, train_loss=2 / e, train_accuracy=.3 + .1 * e, test_loss=2.2 / e, test_accuracy=.25 + .1 * e,
                 lr=.1 / 10 ** (e // 3), seconds=10.) for e in range(1, 6)]
    write_metrics(tmp_path / 'metrics.csv', rows)
    fig = plot_curves(tmp_path / 'metrics.csv', tmp_path / 'curves.png')
    check_png(fig, tmp_path / 'curves.png')
    acc, loss, lr = fig.axes
    assert [l.get_label() for l in acc.lines] == ['train', 'test'] and lr.get_yscale() == 'log'
    assert acc.lines[1].get_ydata() == pytest.approx([100 * r['test_accuracy'] for r in rows])
    assert loss.lines[0].get_ydata() == pytest.approx([r['train_loss'] for r in rows], rel=1e-5)
    assert '75.00 % at epoch 5' in fig._suptitle.get_text()


@pytest.mark.parametrize('eps', [0.1, 0.2])
def test_curves_of_a_smoothed_loss_mark_the_lowest_loss_torchs_smoothed_cross_entropy_can_reach(tmp_path, eps):
    rows = [dict(epoch=e, train_loss=1.5 / e, train_accuracy=.5, test_loss=1.4 / e, test_accuracy=.5, lr=.1,
                 seconds=1.) for e in (1, 2)]
    loss = plot_curves(rows, label_smoothing=eps).axes[1]
    floor = loss.lines[2].get_ydata()[0]
    # torch's loss at logits whose softmax is the smoothed target is the least: nudging them anywhere raises it
    target = torch.full((1, 10), eps / 10, dtype=torch.float64); target[0, 3] += 1 - eps
    logits = target.log().requires_grad_()
    least = F.cross_entropy(logits, torch.tensor([3]), label_smoothing=eps)
    (grad,) = torch.autograd.grad(least, logits)
    assert floor == pytest.approx(least.item(), rel=1e-9) and grad.abs().max() < 1e-12
    assert 'label smoothing' in loss.lines[2].get_label() and len(plot_curves(rows).axes[1].lines) == 2


def test_curves_name_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='metrics.csv'): plot_curves(tmp_path)


def test_augmentation_preview_is_a_row_per_class_and_repeats_with_its_seed(sample_run, tmp_path):
    dls = sample_run[0].dls
    fig = plot_augmentations(dls, n=3, seed=1, path=tmp_path / 'a.png')
    check_png(fig, tmp_path / 'a.png')
    assert len(fig.axes) == 10 * 4
    assert [fig.axes[4 * r].get_ylabel() for r in range(10)] == list(dls.data.classes)
    pixels = lambda f: np.stack([ax.images[0].get_array() for ax in f.axes])
    assert np.array_equal(pixels(fig), pixels(plot_augmentations(dls, n=3, seed=1)))
    assert not np.array_equal(pixels(fig), pixels(plot_augmentations(dls, n=3, seed=2)))


def test_with_alternating_flips_the_preview_shows_each_image_mirrored_every_other_epoch():
    data = synthetic_cifar(40, 8)
    dls = cifar_dls(data, bs=8, augs=cifar_augs(flip=False, cutout=0), seed=0, device='cpu', alternate_flip=True)
    fig = plot_augmentations(dls, n=3, seed=2)
    rows = [[ax.images[0].get_array() for ax in fig.axes[4 * r:4 * r + 4]] for r in range(10)]
    for original, first, second, third in rows:
        assert np.array_equal(second, first[:, ::-1]) and np.array_equal(third, first)
        assert np.array_equal(first, original) or np.array_equal(first, original[:, ::-1])
    assert 'alternating flip' in fig._suptitle.get_text() and fig.axes[2].get_title() == 'epoch 2'
