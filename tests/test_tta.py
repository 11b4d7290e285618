"Test-time augmentation: the weighted mean of the probabilities of an image's views (mirrored, moved one pixel)"
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from cifar_fastai.callbacks import format_row
from cifar_fastai.evaluate import MoveBatch, predict
from cifar_fastai.learner import cifar_learner
from cifar_fastai.loaders import cifar_dls, ds_idx_of_test
from tests.helpers import synthetic_cifar


def test_tta_is_the_mean_of_plain_and_mirrored_probabilities():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))  # sees left and right apart
    dls = cifar_dls(synthetic_cifar(32, 24), bs=8, seed=0)
    learn = cifar_learner(dls, model=model, precision='fp32', channels_last=False)
    xs = torch.cat([x for x, _ in dls.valid])  # the normalised test images, in order
    with torch.no_grad(): plain, mirrored = (torch.softmax(model(x), dim=1) for x in (xs, xs.flip(3)))
    assert not torch.allclose(plain, mirrored, atol=1e-3)  # the mirror changes the prediction
    torch.testing.assert_close(predict(learn).probs, plain, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(predict(learn, tta=True).probs, (plain + mirrored) / 2, atol=1e-6, rtol=1e-5)


def moved(xs: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    "`xs` moved `dy` pixels down and `dx` right, the uncovered edge a reflection, with numpy rather than torch"
    a = np.pad(xs.numpy(), ((0, 0), (0, 0), (1, 1), (1, 1)), mode='reflect')
    h, w = xs.shape[-2:]
    return torch.from_numpy(a[..., 1 - dy:1 - dy + h, 1 - dx:1 - dx + w].copy())


def test_moved_views_shift_the_pixels_and_reflect_the_edge():
    x = torch.arange(16.).reshape(1, 1, 4, 4)
    down_right = moved(x, 1, 1)[0, 0]
    assert down_right[1:, 1:].tolist() == x[0, 0, :-1, :-1].tolist()   # each pixel one step down and right
    assert down_right[0].tolist() == [5., 4., 5., 6.]                  # the new top row reflects row 1, as padded
    assert moved(x, -1, -1)[0, 0, :-1, :-1].tolist() == x[0, 0, 1:, 1:].tolist()


@pytest.mark.parametrize('dy,dx', [(1, 1), (-1, -1), (1, -1), (0, 1)])
def test_move_batch_makes_the_moved_view(dy, dx):
    x = torch.randn(2, 3, 8, 8)
    cb = MoveBatch(dy, dx)
    cb.learn = SimpleNamespace(xb=(x,))
    cb.before_batch()
    torch.testing.assert_close(cb.learn.xb[0], moved(x, dy, dx))


def test_translate_tta_weighs_six_views_as_airbench_does():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))  # sees every pixel's place
    dls = cifar_dls(synthetic_cifar(32, 24), bs=8, seed=0)
    learn = cifar_learner(dls, model=model, precision='fp32', channels_last=False)
    xs = torch.cat([x for x, _ in dls.valid])
    views = [xs, xs.flip(3)] + [v for d in (-1, 1) for v in (moved(xs, d, d), moved(xs, d, d).flip(3))]
    with torch.no_grad(): probs = [torch.softmax(model(v), dim=1) for v in views]
    expected = (probs[0] + probs[1]) / 4 + sum(probs[2:]) / 8  # the paper's weights: 1/4 twice, 1/8 four times
    assert not torch.allclose(probs[0], probs[2], atol=1e-3)  # a one-pixel move changes the prediction
    torch.testing.assert_close(predict(learn, tta='translate').probs, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(predict(learn, tta='flip').probs, predict(learn, tta=True).probs)
    with pytest.raises(ValueError, match="tta='crop' is not one of flip, translate"): predict(learn, tta='crop')

# each epoch of a fit with `tta=True` (`TestPass`), as `train --tta` records it
def left_right_model() -> nn.Module:
    "A model that tells left from right (no pooling before the linear layer): its mirror view predicts differently"
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))


def by_hand(model: nn.Module, dl) -> tuple:
    "Plain and flip-TTA accuracy of `model` over `dl`, from its logits in eval mode"
    model.eval()
    correct_plain = correct_tta = n = 0
    with torch.no_grad():
        for x, y in dl:
            plain, mirrored = model(x).softmax(-1), model(torch.flip(x, dims=[3])).softmax(-1)
            correct_plain += (plain.argmax(-1) == y).sum().item()
            correct_tta += (((plain + mirrored) / 2).argmax(-1) == y).sum().item()
            n += len(y)
    return correct_plain / n, correct_tta / n


@pytest.mark.parametrize('valid_pct', [0., 0.2])  # the loop validates on the test split, or `TestPass` predicts it
def test_epoch_tta_accuracy_is_the_mean_of_plain_and_mirrored_probabilities(valid_pct):
    dls = cifar_dls(synthetic_cifar(200, 200, seed=1), bs=20, seed=0, valid_pct=valid_pct)
    # the average is tested, kept
    learn = cifar_learner(dls, model=left_right_model(), precision='fp32', ema=0.9, tta=True)
    learn.fit(1, 0.01)
    row = learn.epoch_record.rows[-1]
    plain, tta = by_hand(learn.model, dls[ds_idx_of_test(dls)])
    assert plain != tta  # the mirrored view changed some predictions: the column is not the plain accuracy again
    assert row['test_accuracy'] == pytest.approx(plain) and row['test_tta_accuracy'] == pytest.approx(tta)
    assert f"(flip TTA {tta:.2%})" in format_row(row)


def test_without_tta_the_record_has_no_tta_column_and_no_mirrored_pass():
    dls = cifar_dls(synthetic_cifar(100, 30), bs=20, seed=0)
    learn = cifar_learner(dls, model=left_right_model(), precision='fp32')
    calls = []
    learn.model.register_forward_hook(lambda m, i, o: calls.append(len(i[0])) if not m.training else None)
    learn.fit(1, 0.01)
    assert 'test_tta_accuracy' not in learn.epoch_record.rows[-1] and sum(calls) == 30
