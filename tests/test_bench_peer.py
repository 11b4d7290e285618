"scripts/bench_peer.py: airbench94 and the ResNet18 recipe in plain PyTorch, each piece against a reference"
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cifar_fastai.data import read_cifar10
from cifar_fastai.models import resnet18
from tests.helpers import load_script, synthetic_cifar


@pytest.fixture(scope='module')
def bench(): return load_script('bench_peer')


@pytest.fixture(scope='module')
def sample_images(bench):
    "The bundled sample's 500 training images, normalised"
    return bench.normalise(read_cifar10('sample').train_x)


def test_a_subset_is_the_first_images_of_each_class_in_their_order(bench):
    y = np.array([0, 1, 0, 2, 1, 0, 2, 2, 1])
    assert bench.first_of_each_class(y, 3, 3, '--n-train').tolist() == [0, 1, 3]
    assert bench.first_of_each_class(y, 6, 3, '--n-train').tolist() == [0, 1, 2, 3, 4, 6]
    assert bench.first_of_each_class(y, None, 3, '--n-train').tolist() == list(range(9))
    with pytest.raises(ValueError, match='--n-test 4: give a positive multiple of 3'):
        bench.first_of_each_class(y, 4, 3, '--n-test')
    with pytest.raises(ValueError, match=r'--n-train 12: classes \[0, 1, 2\] hold fewer than 4'):
        bench.first_of_each_class(y, 12, 3, '--n-train')


def test_images_are_normalised_by_the_cifar10_mean_and_std_channel_by_channel(bench):
    x = np.zeros((1, 32, 32, 3), np.uint8)
    x[..., 0] = 255  # a pure red image
    t = bench.normalise(x)
    assert t.shape == (1, 3, 32, 32) and t.dtype == torch.float32
    # (pixel / 255 - mean) / std with the training set's mean 0.4914/0.4822/0.4465 and std 0.2470/0.2435/0.2616
    expected = [(1 - 0.4914) / 0.2470, -0.4822 / 0.2435, -0.4465 / 0.2616]
    assert t[0, :, 5, 7].tolist() == pytest.approx(expected, rel=1e-5)


def test_the_whitening_stem_maps_the_training_patches_to_identity_covariance(bench, sample_images):
    w = bench.whitening_weights(sample_images, eps=0.)
    assert w.shape == (24, 3, 2, 2)
    out = F.conv2d(sample_images.double(), w.double()).permute(0, 2, 3, 1).reshape(-1, 24).numpy()
    assert len(out) == 500 * 31 * 31  # every 2x2 patch of every image
    assert np.cov(out[:, :12], rowvar=False) == pytest.approx(np.eye(12), abs=1e-4)
    assert np.array_equal(out[:, 12:], -out[:, :12])  # the second half: the first negated


def test_the_stem_is_frozen_and_later_convs_start_as_partial_identities(bench, sample_images):
    model = bench.airbench_model(sample_images)
    assert not model.whiten.weight.requires_grad and model.whiten.bias.requires_grad
    assert torch.equal(model.whiten.weight, bench.whitening_weights(sample_images[:5000], eps=5e-4))
    for conv, n_in in ((model.block1[0], 24), (model.block1[4], 64), (model.block2[0], 64), (model.block3[4], 256)):
        x = torch.randn(2, n_in, 8, 8)
        assert torch.equal(F.conv2d(x, conv.weight, padding=1)[:, :n_in], x)  # the first n_in filters pass it on


def test_airbench94s_network_has_the_parameters_counted_by_hand(bench, sample_images):
    # stem 24x3x2x2 + 24 bias; convs 3x3: 24-64, 64-64, 64-256, 256-256, 256-256, 256-256; 6 BNs of 1152 channels
    # in all, scale and bias each; head 256 x 10, no bias
    convs = 9 * (24 * 64 + 64 * 64 + 64 * 256 + 3 * 256 * 256)
    model = bench.airbench_model(sample_images)
    assert sum(p.numel() for p in model.parameters()) == 312 + convs + 2 * 1152 + 2560 == 1_972_792
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 1_972_792 - 288 - 1152
    assert model(sample_images[:3].contiguous(memory_format=torch.channels_last)).shape == (3, 10)


def test_the_resnet18_of_the_package_has_its_published_size():
    assert sum(p.numel() for p in resnet18().parameters()) == 11_173_962


@pytest.mark.parametrize('total, warmup, n_up, start, end', [
    (476, 0.23, 109, 0.2, 0.07),  # airbench94 on 50,000 images: 48 steps an epoch for 9.9 epochs
    (1300, 0.2, 260, 1e-6, 0.),   # the ResNet18's shape; torch's LinearLR cannot start at 0
])
def test_the_triangle_matches_torchs_linear_lr_chained_by_sequential_lr(bench, total, warmup, n_up, start, end):
    def rates(make):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
        sched, seen = make(opt), []
        for _ in range(total):
            seen.append(opt.param_groups[0]['lr'])
            opt.step()
            sched.step()
        return seen
    ours = rates(lambda opt: torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: bench.triangle(step, total, warmup, start, end)))
    torchs = rates(lambda opt: torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, start, 1., total_iters=n_up),
        torch.optim.lr_scheduler.LinearLR(opt, 1., end, total_iters=total - n_up)], milestones=[n_up]))
    assert ours == pytest.approx(torchs, rel=1e-6, abs=1e-9)
    assert (ours[0], ours[n_up], max(ours)) == pytest.approx((0.5 * start, 0.5, 0.5))


def test_alternating_flip_mirrors_exactly_the_images_left_as_they_were_the_epoch_before(bench):
    x = torch.arange(8.).view(4, 1, 1, 2)  # image i is the row [2i, 2i + 1]
    first = torch.tensor([True, False, False, True])
    seen = [bench.flip_where(x, bench.alternating_flips(first, epoch)).flatten().tolist() for epoch in range(3)]
    assert seen[0] == [1., 0., 2., 3., 4., 5., 7., 6.]
    assert seen[1] == [0., 1., 3., 2., 5., 4., 6., 7.]
    assert seen[2] == seen[0]


def test_a_translation_is_a_crop_of_the_reflect_padded_image(bench):
    x = torch.randn(40, 3, 32, 32)
    out = bench.translate(x, 2, torch.Generator().manual_seed(0))
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (2, 2), (2, 2)), mode='reflect')
    offsets = set()
    for i in range(len(x)):
        found = [(dy, dx) for dy in range(5) for dx in range(5)
                 if np.array_equal(out[i].numpy(), padded[i, :, dy:dy + 32, dx:dx + 32])]
        assert len(found) == 1
        offsets.add(found[0])
    assert len(offsets) > 10  # the offsets vary from image to image


def test_cutout_zeroes_one_square_wholly_inside_each_image(bench):
    out = bench.cutout(torch.ones(50, 3, 32, 32), 12, torch.Generator().manual_seed(0))
    for image in out:
        rows, cols = np.nonzero((image == 0).all(0).numpy())
        assert (image == 0).sum() == 3 * 12 * 12
        assert rows.max() - rows.min() == cols.max() - cols.min() == 11


class Symmetric(nn.Module):
    "A linear model of the image plus its mirror image: exactly the same logits for both"
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3 * 32 * 32, 10)

    def forward(self, x): return self.linear(torch.flatten(x + x.flip(-1), 1))


@pytest.mark.parametrize('dtype', [None, torch.bfloat16])
def test_the_flip_tta_of_a_flip_invariant_model_is_its_plain_prediction(bench, dtype):
    model, x = Symmetric().eval(), torch.randn(6, 3, 32, 32)
    assert torch.equal(bench.flip_tta(model, x, dtype), bench.forward(model, x, dtype))
    assert not torch.equal(bench.multicrop_tta(model, x, dtype), bench.forward(model, x, dtype))  # not translations


def test_the_multicrop_tta_weights_six_views_as_airbench(bench):
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)).double().eval(), torch.randn(4, 3, 32, 32)
    # a linear model's mean logits are its logits of the mean image: the image and its mirror at 1/4 each, both
    # moved one pixel down-right and up-left (edges reflected) at 1/8 each
    a = x.double().numpy()
    padded = np.pad(a, ((0, 0), (0, 0), (1, 1), (1, 1)), mode='reflect')
    moved = [padded[..., :32, :32], padded[..., 2:, 2:]]
    mean = (a + a[..., ::-1]) / 4 + sum(m + m[..., ::-1] for m in moved) / 8
    w, b = model[1].weight.detach().numpy(), model[1].bias.detach().numpy()
    expected = mean.reshape(4, -1) @ w.T + b
    assert bench.multicrop_tta(model, x.double(), None).numpy() == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_lookahead_blends_the_weights_into_the_slow_ones_then_replaces_them(bench):
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    lookahead = bench.Lookahead(model)
    for fast, decay, expected in ((1., 0.75, 0.25), (1., 0.5, 0.625), (5., 1., 0.625)):
        nn.init.constant_(model.weight, fast)
        lookahead.update(model, decay)
        assert model.weight.item() == pytest.approx(expected)  # 0.75 x 0 + 0.25 x 1; 0.5 x 0.25 + 0.5 x 1; kept


def test_the_optimizer_gives_batchnorm_biases_64_times_the_rate_and_every_group_the_same_decay(bench, sample_images):
    model = bench.airbench_model(sample_images)
    biases, others = bench.airbench_optimizer(model, 1024).param_groups
    assert sum(p.numel() for p in biases['params']) == 1152
    assert not any(p is model.whiten.weight for p in others['params'])  # frozen: not optimised at all
    # 11.5 per 1024 examples over momentum's gain 1 + 1 / (1 - 0.85) = 7.667: 11.5 / 7850.67 per example
    assert (others['lr'], biases['lr']) == pytest.approx((1.46484e-3, 64 * 1.46484e-3), rel=1e-5)
    # 0.0153 per 1024 examples, a batch of 1024: 0.0153 / 7.667 of each weight a step at the peak rate
    for group in (biases, others): assert group['lr'] * group['weight_decay'] == pytest.approx(1.99565e-3, rel=1e-5)
    assert biases['nesterov'] and biases['momentum'] == 0.85


def test_the_stems_bias_freezes_after_three_epochs(bench):
    data = bench.as_arrays(synthetic_cifar(64, 32))
    run = bench.Airbench94Run(data, bench.Airbench94(), torch.Generator().manual_seed(0))
    run.before_epoch(2)
    assert run.model.whiten.bias.requires_grad
    run.before_epoch(3)
    assert not run.model.whiten.bias.requires_grad
    assert torch.equal(run.flips, ~run.first_flips)  # epoch 3 mirrors the half that epoch 0 left


def test_a_smoke_run_on_the_sample_writes_the_table_and_a_json_of_accuracies(bench, tmp_path, capsys):
    out = tmp_path / 'peer' / 'peer.json'
    bench.main(['--data', 'sample', '--n-train', '100', '--n-test', '50', '--epochs-airbench94', '1',
                '--epochs-resnet18', '1', '--precision', 'bf16', '--out', str(out)])
    results = json.loads(out.read_text())
    assert (results['n_train'], results['n_test'], results['precision']) == (100, 50, 'bf16')
    assert [r['recipe'] for r in results['results']] == ['airbench94', 'resnet18']
    for r in results['results']:
        assert r['epochs'] == 1 and r['steps'] == 1 and r['bs'] == 100  # one batch of all 100 images
        assert 0 <= r['test_accuracy'] <= 1 and 0 <= r['tta_accuracy'] <= 1 and r['minutes'] > 0
    printed = capsys.readouterr()
    assert '| recipe | epochs | minutes of training | test accuracy | TTA test accuracy (views) |' in printed.out
    assert 'airbench94 epoch 1/1:' in printed.err and 'resnet18 epoch 1/1:' in printed.err


@pytest.mark.parametrize('args, message', [
    (['--n-train', '105'], '--n-train 105: give a positive multiple of 10'),
    (['--n-test', '300'], r'--n-test 300: classes \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\] hold fewer than 30'),
])
def test_a_subset_the_data_cannot_give_is_refused_by_its_option(bench, args, message):
    with pytest.raises(SystemExit, match=message): bench.main(['--data', 'sample', *args])


def test_missing_data_is_named_in_one_line(bench, tmp_path):
    with pytest.raises(SystemExit, match=f'^bench_peer: {tmp_path / "nowhere"} does not exist; pass a folder'):
        bench.main(['--data', str(tmp_path / 'nowhere')])
