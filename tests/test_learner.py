"The Learner: SGD with momentum and L2 or decoupled weight decay, and an lr_find that puts everything back"
import pytest
import torch

from cifar_fastai.learner import cifar_learner
from cifar_fastai.loaders import cifar_dls
from tests.helpers import NanFrom, synthetic_cifar


@pytest.fixture(scope='module')
def dls(): return cifar_dls(synthetic_cifar(64, 32), bs=32, seed=0)


def _snapshot(learn):
    opt = {id(p): {k: v.clone() for k, v in s.items() if torch.is_tensor(v)} for p, s in learn.opt.state.items()}
    return {k: v.clone() for k, v in learn.model.state_dict().items()}, opt, [dict(h) for h in learn.opt.hypers]


def test_lr_find_restores_weights_and_optimizer_state_exactly(dls, tmp_path):
    learn = cifar_learner(dls, path=tmp_path, precision='fp32')
    learn.fit(1, 0.01)  # momentum buffers and batch-norm statistics are not at their initial values
    weights, opt, hypers = _snapshot(learn)
    assert opt and all(s for s in opt.values())
    learn.lr_find(num_it=10, show_plot=False)
    weights2, opt2, hypers2 = _snapshot(learn)
    assert weights.keys() == weights2.keys() and all(torch.equal(weights[k], weights2[k]) for k in weights)
    assert opt.keys() == opt2.keys()
    for p in opt: assert all(torch.equal(opt[p][k], opt2[p][k]) for k in opt[p])
    assert hypers == hypers2
    assert list(tmp_path.rglob('*.pth')) == []  # the finder's temporary copy is gone


def test_a_range_test_that_diverges_to_nan_ends_there_and_suggests_from_before(dls, tmp_path):
    # fastai's range test expects the loss to blow up at its end: the NaN is its signal to stop, not the run's error
    from cifar_fastai.run import find_lr
    learn = cifar_learner(dls, model=_small_model(), path=tmp_path, precision='fp32', channels_last=False)
    weights = {k: v.clone() for k, v in learn.model.state_dict().items()}
    learn.add_cb(NanFrom(25))
    found = find_lr(learn, num_it=40)
    assert len(learn.recorder.losses) == 24 and all(torch.isfinite(torch.as_tensor(learn.recorder.losses)))
    assert all(torch.equal(weights[k], v) for k, v in learn.model.state_dict().items())  # put back as without a NaN


@pytest.mark.parametrize('nan_from,rules', [(None, ('minimum', 'slide', 'steep', 'valley')),
                                             (25, ('minimum', 'steep', 'valley'))])  # fastai's slide fails on 15 points
def test_every_suggestion_is_the_one_fastais_lr_find_gives_for_the_same_recorded_test(dls, tmp_path, nan_from, rules):
    from fastai.callback import schedule
    from cifar_fastai.rangetest import _suggestions
    learn = cifar_learner(dls, model=_small_model(), path=tmp_path, precision='fp32', channels_last=False)
    if nan_from: learn.add_cb(NanFrom(nan_from))
    theirs = learn.lr_find(num_it=40, show_plot=False, suggest_funcs=[getattr(schedule, r) for r in rules])
    ours = _suggestions(learn.recorder, 40)
    assert {r: ours[r] for r in rules} == pytest.approx(theirs._asdict(), rel=1e-6)


def _small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 10))


@pytest.mark.parametrize('mult', [1., 2.5])
def test_find_lr_returns_mult_times_the_suggestion_and_plots_it(dls, tmp_path, mult):
    from PIL import Image
    from cifar_fastai.run import find_lr
    learn = cifar_learner(dls, model=_small_model(), path=tmp_path, precision='fp32', channels_last=False)
    found = find_lr(learn, tmp_path / 'lr_find.png', 'minimum', num_it=20, mult=mult)
    assert found['suggestion'] == 'minimum' and found['mult'] == mult and found['minimum'] > 0
    assert found['lr'] == pytest.approx(mult * found['minimum'], rel=1e-12)
    with Image.open(tmp_path / 'lr_find.png') as im: assert im.size[0] > 100 and im.size[1] > 100


@pytest.mark.parametrize('nesterov', [False, True])
@pytest.mark.parametrize('wd_mode,torch_opt', [
    ('l2', lambda ps, lr, wd, nesterov: torch.optim.SGD(ps, lr=lr, momentum=0.9, weight_decay=wd, nesterov=nesterov)),
    ('decoupled', lambda ps, lr, wd, nesterov: torch.optim.SGD(ps, lr=lr, momentum=0.9, nesterov=nesterov))])
def test_sgd_steps_match_torch_sgd(dls, wd_mode, torch_opt, nesterov):
    torch.manual_seed(0)
    ours, ref = (torch.nn.Linear(8, 4, bias=False) for _ in range(2))
    ref.load_state_dict(ours.state_dict())
    learn = cifar_learner(dls, model=torch.nn.Sequential(ours), wd=0.05, wd_mode=wd_mode, lr=0.1, precision='fp32',
                          nesterov=nesterov)
    learn.create_opt()
    learn.opt.set_hypers(lr=0.1, wd=0.05)
    ref_opt = torch_opt(ref.parameters(), 0.1, 0.05, nesterov)
    for step in range(5):
        x = torch.randn(16, 8, generator=torch.Generator().manual_seed(step))
        for model, opt in ((ours, learn.opt), (ref, ref_opt)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            if opt is ref_opt and wd_mode == 'decoupled':
                with torch.no_grad(): model.weight.mul_(1 - 0.1 * 0.05)  # decoupled decay: p -= lr * wd * p
            opt.step()
    assert torch.allclose(ours.weight, ref.weight, atol=1e-6)


def _conv_bn_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 10))


@pytest.mark.parametrize('nesterov', [False, True])
def test_bn_bias_scale_steps_as_torch_sgd_with_a_faster_group_for_the_batch_norm_biases(dls, nesterov):
    ours, ref = _conv_bn_model(), _conv_bn_model()
    learn = cifar_learner(dls, model=ours, wd=0.05, lr=0.1, precision='fp32', nesterov=nesterov, bn_bias_scale=8.,
                          channels_last=False)
    learn.create_opt()
    # fastai leaves norm parameters and biases out of the weight decay (`wd_bn_bias=False`); the rest get L2
    decayed = [ref[0].weight, ref[5].weight]
    groups = [dict(params=decayed, weight_decay=0.05), dict(params=[ref[1].weight, ref[5].bias], weight_decay=0.),
              dict(params=[ref[1].bias], weight_decay=0., scale=8.)]
    ref_opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=nesterov)
    for step in range(4):
        lr = 0.1 / (step + 1)  # as a schedule sets it: one rate for every group
        learn.opt.set_hypers(lr=lr, wd=0.05)
        for g in ref_opt.param_groups: g['lr'] = lr * g.get('scale', 1.)
        x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(step))
        for model, opt in ((ours, learn.opt), (ref, ref_opt)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
    assert not torch.allclose(ours[1].bias, _conv_bn_model()[1].bias, atol=1e-3)  # the biases did move


def test_the_range_test_steps_the_batch_norm_biases_at_the_tested_rate_and_their_scale_comes_back(tmp_path):
    from cifar_fastai.run import find_lr
    tested = {}
    for scale in (1., 64.):
        learn = cifar_learner(cifar_dls(synthetic_cifar(64, 32), bs=32, seed=0), model=_conv_bn_model(),
                              path=tmp_path, precision='fp32', channels_last=False, bn_bias_scale=scale)
        torch.manual_seed(0)
        tested[scale] = find_lr(learn, num_it=20), torch.tensor(learn.recorder.losses)
        assert [h['lr_scale'] for h in learn.opt.hypers] == ([1., 64.] if scale != 1 else [1.])
    assert torch.allclose(tested[64.][1], tested[1.][1]) and tested[64.][0]['lr'] == tested[1.][0]['lr']


def test_norm_bias_split_puts_the_batch_norm_biases_of_the_resnet18_alone_in_the_second_group():
    from cifar_fastai.models import resnet18
    from cifar_fastai.optim import norm_bias_split
    model = resnet18()
    rest, biases = norm_bias_split(model)
    names = {id(p): n for n, p in model.named_parameters()}
    # the convolutions have no bias: every bias but the classifier's is a batch norm's
    assert sorted(names[id(b)] for b in biases) == sorted(n for n in names.values() if n.endswith('.bias')
                                                          and n != 'linear.bias')
    assert len(biases) == 20 and len(rest) + len(biases) == len(list(model.parameters()))


@pytest.mark.parametrize('kwargs,match', [(dict(wd_mode='adamw'), 'wd_mode'), (dict(lr=0), 'lr'),
                                          (dict(bn_bias_scale=0), 'bn_bias_scale')])
def test_bad_learner_arguments_are_named(dls, kwargs, match):
    with pytest.raises(ValueError, match=match): cifar_learner(dls, **kwargs)


def test_default_learner_trains_the_cifar_resnet18_with_sgd_momentum(dls):
    learn = cifar_learner(dls)
    learn.create_opt()
    assert sum(p.numel() for p in learn.model.parameters()) == 11_173_962
    assert learn.opt.hypers[0]['mom'] == 0.9 and learn.wd == 5e-4
    assert learn.recorder.train_metrics


@pytest.mark.parametrize('eps', [0., 0.1, 0.2])
def test_label_smoothing_loss_is_the_hand_computed_mixture(dls, eps):
    learn = cifar_learner(dls, label_smoothing=eps, precision='fp32')
    logits, y = torch.randn(6, 10, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 3, 9, 1, 1, 5])
    logp = logits.log_softmax(-1)
    # eps spread evenly over the 10 classes
    expected = ((1 - eps) * -logp[torch.arange(6), y] + eps * -logp.mean(-1)).mean()
    assert float(learn.loss_func(logits, y)) == pytest.approx(float(expected), rel=1e-6)


def test_label_smoothing_out_of_range_is_refused(dls):
    with pytest.raises(ValueError, match='label_smoothing'): cifar_learner(dls, label_smoothing=1.0)


@pytest.mark.parametrize('n_batches,iters', [
    (781, 300),  # full CIFAR-10 at bs 64: 300 batches, 0.4 passes, as measured
    (60, 300),   # 5 passes would be 300: either rule
    (7, 35),     # the bundled sample's 500 images at bs 64 (the last, partial batch dropped): 5 passes
    (2, 20)])    # 5 passes would leave the suggestion rules too few points
def test_the_range_test_runs_300_batches_or_5_passes_over_smaller_data(n_batches, iters):
    from cifar_fastai.run import lr_find_length
    assert lr_find_length(n_batches) == iters


def test_find_lr_without_a_length_follows_the_data(dls, tmp_path):
    from cifar_fastai.run import find_lr
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3072, 10))
    learn = cifar_learner(dls, model=model, path=tmp_path, precision='fp32', channels_last=False)
    found = find_lr(learn)  # 64 images at bs 32: 2 batches a pass
    assert found['num_it'] == 20 and 10 < len(learn.recorder.lrs) <= 20
