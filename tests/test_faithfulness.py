"Specification of `cifar_fastai.faithfulness`: curves equal pytorch-grad-cam's perturbations, and a hand-built case"
import copy
import math

import numpy as np
import pytest
import torch
from pytorch_grad_cam.metrics.perturbation_confidence import (PerturbationConfidenceMetric, RemoveLeastRelevantFirst,
                                                              RemoveMostRelevantFirst)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from scipy.ndimage import gaussian_filter
from torch import nn

from cifar_fastai.faithfulness import (BLUR_KERNEL, BLUR_SIGMA, RANDOM, auc, deletion_curves, faithfulness,
                                       insertion_curves, random_maps, stage_faithfulness)
from cifar_fastai.gradcam import CAMS, LayerCAM
from cifar_fastai.learner import cifar_learner
from cifar_fastai.loaders import cifar_dls
from cifar_fastai.precision import AutocastModule, autocast_dtype

TOL = 1e-5  # probabilities against pytorch-grad-cam's (float32)
STEPS = 8


def tiny_net(seed=0):
    "A small CNN with batch norm, 10 classes, two stages (32x32 and 16x16)"
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def batch(bs=3, seed=1): return torch.randn(bs, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def tie_free_maps(bs=3, seed=2): return torch.rand(bs, 32, 32, generator=torch.Generator().manual_seed(seed))


def reference_blur(img: torch.Tensor) -> torch.Tensor:
    "scipy's Gaussian filter over H and W, mirrored at the border as torch's 'reflect' padding, radius 5"
    radius = BLUR_KERNEL // 2
    return torch.from_numpy(gaussian_filter(img.numpy(), sigma=(0, BLUR_SIGMA, BLUR_SIGMA), mode='mirror',
                                            radius=(0, radius, radius))).float()


def reference_points(model, x, maps, targets, removal, imputer):
    "pytorch-grad-cam's probability of `targets` after `removal(percentile, imputer)` at each inner step"
    probs = [ClassifierOutputSoftmaxTarget(int(t)) for t in targets]
    return torch.stack([torch.from_numpy(PerturbationConfidenceMetric(removal(100 * k / STEPS, imputer))(
        x, maps.numpy(), probs, model, return_diff=False)) for k in range(1, STEPS)], 1)


def softmax_at(model, x, targets):
    with torch.no_grad(): return model(x).softmax(1).gather(1, targets[:, None])[:, 0]


@pytest.fixture(scope='module')
def reference():
    "The tiny net in eval mode, images, tie-free maps and targets"
    model = tiny_net().eval()
    return model, batch(), tie_free_maps(), torch.tensor([3, 7, 0])


def test_deletion_curve_equals_pytorch_grad_cam_removing_the_most_relevant_first(reference):
    model, x, maps, targets = reference
    curves = deletion_curves(copy.deepcopy(model), x, maps, targets, STEPS)
    # percentile 100 - p of the map kept, the rest imputed with 0 (the mean colour): p % of the pixels deleted
    expected = reference_points(model, x, maps, targets, lambda p, imp: RemoveMostRelevantFirst(100 - p, imp),
                                lambda img, keep: img * keep)
    assert curves.shape == (3, STEPS + 1)
    assert (curves[:, 1:-1] - expected).abs().max().item() <= TOL
    assert torch.allclose(curves[:, 0], softmax_at(model, x, targets), atol=TOL)
    assert torch.allclose(curves[:, -1], softmax_at(model, torch.zeros_like(x), targets), atol=TOL)


def test_insertion_curve_equals_pytorch_grad_cam_keeping_the_most_relevant_over_a_blur(reference):
    model, x, maps, targets = reference
    curves = insertion_curves(copy.deepcopy(model), x, maps, targets, STEPS)
    expected = reference_points(model, x, maps, targets, RemoveLeastRelevantFirst,
                                lambda img, keep: img * keep + reference_blur(img) * (1 - keep))
    blurred = torch.stack([reference_blur(i) for i in x])
    assert (curves[:, 1:-1] - expected).abs().max().item() <= TOL
    assert torch.allclose(curves[:, 0], softmax_at(model, blurred, targets), atol=TOL)
    assert torch.allclose(curves[:, -1], softmax_at(model, x, targets), atol=TOL)


def test_one_step_curves_are_the_image_and_its_end(reference):
    model, x, maps, targets = reference
    deletion, insertion = (f(copy.deepcopy(model), x, maps, targets, 1) for f in (deletion_curves, insertion_curves))
    blurred = torch.stack([reference_blur(i) for i in x])
    expected = [softmax_at(model, x, targets), softmax_at(model, torch.zeros_like(x), targets)]
    assert torch.allclose(deletion, torch.stack(expected, 1), atol=TOL)
    assert torch.allclose(insertion, torch.stack([softmax_at(model, blurred, targets), expected[0]], 1), atol=TOL)


def test_scores_are_the_trapezoidal_areas_of_the_curves(reference):
    model, x, maps, targets = reference
    scores = faithfulness(copy.deepcopy(model), x, maps, targets, STEPS)
    for name, curves in (('deletion', deletion_curves), ('insertion', insertion_curves)):
        expected = np.trapezoid(curves(model, x, maps, targets, STEPS).numpy(), dx=1 / STEPS, axis=1)
        np.testing.assert_allclose(scores[name].numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(auc(torch.tensor([[1., 0., 1.], [0., .5, 1.]])).numpy(), [.5, .5])


def test_targets_none_scores_the_predicted_class(reference):
    model, x, maps, _ = reference
    with torch.no_grad(): predicted = model(x).argmax(1)
    assert torch.equal(deletion_curves(model, x, maps, None, 4), deletion_curves(model, x, maps, predicted, 4))
    assert torch.equal(insertion_curves(model, x, maps, None, 4), insertion_curves(model, x, maps, predicted, 4))


@pytest.mark.parametrize('bs', [1, 10, 20])  # an image's 5 steps over 5 batches; 2 images a batch; all 3 at once
def test_batch_size_bounds_memory_and_leaves_the_curves_alone(reference, bs):
    model, x, maps, targets = reference
    expected = deletion_curves(model, x, maps, targets, 4, bs=256)
    assert torch.allclose(deletion_curves(model, x, maps, targets, 4, bs=bs), expected, atol=1e-6)


class CornerModel(nn.Module):
    "Two classes: logit 4 x the mean of the top-left 8x8 corner of every channel, against 0; nothing else counts"
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(4.))

    def forward(self, x):
        score = self.scale * x[:, :, :8, :8].mean((1, 2, 3))
        return torch.stack([score, torch.zeros_like(score)], 1)


def corner_images(bs=32):
    "Dark noise with the top-left 8x8 corner at 1: the corner model gives class 0 a probability of sigmoid(4)"
    x = batch(bs, seed=5) / 2 - 1  # dark around the corner, so that blurring dims the corner a lot
    x[:, :, :8, :8] = 1
    return x


def corner_maps(bs, corner: str):
    "A diagonal ramp up to `corner`: the top-left 8x8 (i + j <= 14, inside the 128 pixels i + j <= 15) first or last"
    i, j = torch.meshgrid(torch.arange(32.), torch.arange(32.), indexing='ij')
    ramp = (i + j) / 62
    return (1 - ramp if corner == 'top-left' else ramp).expand(bs, 32, 32)


SIG4 = 1 / (1 + math.exp(-4))  # the corner model's probability of class 0 with its corner intact


def test_deletion_of_a_hand_built_case_scores_the_seen_corner_best_and_the_opposite_corner_worse_than_random():
    model, x = CornerModel(), corner_images()
    scores = {name: faithfulness(model, x, maps, 0, STEPS)['deletion'] for name, maps in
              [('seen', corner_maps(32, 'top-left')), ('opposite', corner_maps(32, 'bottom-right')),
               ('random', random_maps(32, (32, 32), (32, 32), seed=0))]}
    # the seen corner's 64 pixels go with the first eighth of the image (probability 1/2 after), the opposite's last
    seen, opposite = [SIG4] + [.5] * STEPS, [SIG4] * STEPS + [.5]
    assert scores['seen'] == pytest.approx(torch.full((32,), np.trapezoid(seen, dx=1 / STEPS)), abs=1e-6)
    assert scores['opposite'] == pytest.approx(torch.full((32,), np.trapezoid(opposite, dx=1 / STEPS)), abs=1e-6)
    assert scores['seen'].mean() + 0.1 < scores['random'].mean() < scores['opposite'].mean() - 0.05


def test_insertion_of_a_hand_built_case_scores_the_seen_corner_best_and_the_opposite_corner_worse_than_random():
    model, x = CornerModel(), corner_images()
    corner_of_blur = torch.stack([reference_blur(i) for i in x])[:, :, :8, :8].mean((1, 2, 3))
    start = torch.sigmoid(4 * corner_of_blur)  # class 0 on the blurred image: the blur dims the corner
    scores = {name: faithfulness(model, x, maps, 0, STEPS)['insertion'] for name, maps in
              [('seen', corner_maps(32, 'top-left')), ('opposite', corner_maps(32, 'bottom-right')),
               ('random', random_maps(32, (4, 4), (32, 32), seed=0))]}
    assert scores['seen'] == pytest.approx((start / 2 + (STEPS - .5) * SIG4) / STEPS, abs=1e-5)
    assert scores['opposite'] == pytest.approx(((STEPS - .5) * start + SIG4 / 2) / STEPS, abs=1e-5)
    assert scores['opposite'].mean() + 0.03 < scores['random'].mean() < scores['seen'].mean() - 0.03


def test_tied_pixels_go_in_a_random_order_not_row_by_row():
    "A flat map deletes like random noise: row by row it would wipe the corner in the first quarter"
    model, x = CornerModel(), corner_images()
    flat = deletion_curves(model, x, torch.zeros(32, 32, 32), 0, STEPS)
    noise = deletion_curves(model, x, random_maps(32, (32, 32), (32, 32), seed=1), 0, STEPS)
    assert auc(flat).mean() == pytest.approx(auc(noise).mean().item(), abs=0.02)
    assert (flat[:, 2] > 0.6).all()  # a quarter of the pixels gone, most of every corner still there
    assert torch.equal(flat, deletion_curves(model, x, torch.zeros(32, 32, 32), 0, STEPS, seed=0))
    assert not torch.equal(flat, deletion_curves(model, x, torch.zeros(32, 32, 32), 0, STEPS, seed=1))


def test_random_maps_repeat_with_their_seed_and_span_the_unit_range():
    maps = random_maps(5, (4, 4), (32, 32), seed=3)
    assert maps.shape == (5, 32, 32)
    assert torch.equal(maps, random_maps(5, (4, 4), (32, 32), seed=3))
    assert not torch.equal(maps, random_maps(5, (4, 4), (32, 32), seed=4))
    assert torch.allclose(maps.amin((1, 2)), torch.zeros(5)) and torch.allclose(maps.amax((1, 2)), torch.ones(5))


def test_model_left_as_it_was_found():
    model = tiny_net().train()
    model[1].eval()  # a mixed state must come back module by module
    stats = copy.deepcopy(model[1].state_dict())
    faithfulness(model, batch(), tie_free_maps(), steps=2)
    assert model.training and not model[1].training
    assert all(torch.equal(v, stats[k]) for k, v in model[1].state_dict().items())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize('maps,targets,steps,message', [(torch.rand(3, 16, 16), None, 4, 'maps of shape'),
                                                        (torch.rand(3, 32, 32), [1, 2], 4, '2 targets'),
                                                        (torch.rand(3, 32, 32), None, 0, 'steps')])
def test_bad_arguments_are_rejected(maps, targets, steps, message):
    with pytest.raises(ValueError, match=message): faithfulness(tiny_net(), batch(), maps, targets, steps)


def test_stage_rows_cover_every_method_and_random_maps_at_each_stage():
    model, x, targets = tiny_net().eval(), batch(2), torch.tensor([1, 4])
    rows = stage_faithfulness(model, x, targets, ['0', '3'], steps=2)
    assert [(r['layer'], r['method']) for r in rows] == [(l, m) for l in ('0', '3') for m in (*CAMS, RANDOM)]
    with LayerCAM(model, ['3']) as cam: (maps,) = cam(x, targets)
    layercam = rows[len(CAMS) + 1 + list(CAMS).index('layercam')]
    expected = faithfulness(model, x, maps, targets, steps=2)
    assert all(torch.equal(layercam[k], expected[k]) for k in ('deletion', 'insertion'))
    assert all(r['deletion'].shape == r['insertion'].shape == (2,) for r in rows)


def test_a_scorer_in_bf16_gives_the_curves_of_the_model_under_autocast(reference):
    model, x, maps, targets = reference
    scorer = AutocastModule(copy.deepcopy(model), torch.bfloat16)
    rows = stage_faithfulness(model, x, targets, ['3'], methods=['layercam'], steps=2, scorer=scorer)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16): logits = model(x)
    bf16 = logits.float().softmax(1).gather(1, targets[:, None])[:, 0]
    assert torch.allclose(deletion_curves(scorer, x, maps, targets, 2)[:, 0], bf16, atol=1e-6)
    assert not torch.allclose(bf16, softmax_at(model, x, targets), atol=1e-6)  # bf16 does move the probabilities
    with LayerCAM(model, ['3']) as cam: (layercam,) = cam(x, targets)  # the maps stay fp32's
    assert torch.equal(rows[0]['deletion'], faithfulness(scorer, x, layercam, targets, 2)['deletion'])


def test_a_learner_scores_maps_in_the_precision_it_predicts_in():
    dls = cifar_dls('sample', bs=16, seed=0)
    for precision, dtype in (('bf16', torch.bfloat16), ('fp32', None)):
        assert autocast_dtype(cifar_learner(dls, model=tiny_net(), precision=precision, channels_last=False)) == dtype
