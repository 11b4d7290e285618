"The budget rule, and the warm-up and final decay around the plateau, against torch's own schedulers"
import pytest
import torch
from fastai.callback.core import Callback

from cifar_fastai.learner import cifar_learner
from cifar_fastai.loaders import cifar_dls
from cifar_fastai.recipe import WarmupAnneal, budget_defaults
from cifar_fastai.run import RunConfig
from tests.helpers import synthetic_cifar


HEAVY_BALL, FAST = dict(nesterov=False, label_smoothing=0.), dict(nesterov=True, label_smoothing=0.2)


@pytest.mark.parametrize('epochs, schedule, expected', [
    (5, 'plateau', dict(bs=64, plateau_patience=0, pad=0, cutout=0, lr_mult=5., warmup=0.05, anneal=0.2, **FAST)),
    (10, 'plateau', dict(bs=64, plateau_patience=1, pad=4, cutout=16, lr_mult=5., warmup=0.05, anneal=0.2, **FAST)),
    (50, 'plateau', dict(bs=64, plateau_patience=5, pad=4, cutout=16, lr_mult=5., warmup=0.05, anneal=0.2, **FAST)),
    (100, 'plateau', dict(bs=64, plateau_patience=10, pad=4, cutout=16, lr_mult=5., warmup=0.05, anneal=0.2, **FAST)),
    (8, 'one-cycle', dict(bs=64, plateau_patience=0, pad=0, cutout=0, lr_mult=20., warmup=0., anneal=0., **HEAVY_BALL)),
    (20, 'one-cycle', dict(bs=64, plateau_patience=2, pad=4, cutout=16, lr_mult=20., warmup=0., anneal=0.,
                           **HEAVY_BALL)),
    (8, 'linear', dict(bs=128, plateau_patience=0, pad=0, cutout=0, lr_mult=20., warmup=0.2, anneal=0.8, **FAST)),
    (15, 'linear', dict(bs=128, plateau_patience=1, pad=4, cutout=16, lr_mult=20., warmup=0.2, anneal=0.8, **FAST))])
def test_budget_rule_gives_the_documented_values(epochs, schedule, expected):
    assert budget_defaults(epochs, schedule) == expected
    config = RunConfig(epochs=epochs, schedule=schedule)
    assert {k: getattr(config, k) for k in expected} == expected


def test_options_set_by_hand_win_over_the_budget():
    config = RunConfig(epochs=50, pad=0, lr_mult=3., warmup=0., anneal=0.5, plateau_patience=2)
    assert (config.pad, config.lr_mult, config.warmup, config.anneal, config.plateau_patience) == (0, 3., 0., 0.5, 2)
    config = RunConfig(epochs=8, schedule='linear', nesterov=False, label_smoothing=0., cutout=16)
    assert (config.nesterov, config.label_smoothing, config.cutout) == (False, 0., 16)
    assert (RunConfig(schedule='linear', bs=64).bs, RunConfig(bs=256, ema=0.9).ema) == (64, 0.9)


@pytest.mark.parametrize('bs, ema', [(64, 0.998), (128, 0.996), (256, 0.992), (32, 0.999)])
def test_the_weight_averages_decay_keeps_its_span_in_images_at_any_batch(bs, ema):
    # 0.998 ** 2 = 0.996004, ** 4 = 0.992024, ** 0.5 = 0.998999: by hand, to 4 places
    assert RunConfig(bs=bs).ema == ema and RunConfig(schedule='linear', bs=bs, epochs=8).ema == ema
    images = 64 * 500  # what is left of a weight after that many images, at batch 64 and at this one
    assert ema ** (images / bs) == pytest.approx(0.998 ** (images / 64), rel=0.01)


def _tiny() -> torch.nn.Module:
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))


class StepRates(Callback):
    "The learning rate each optimizer step uses"
    def before_fit(self): self.rates = []
    def before_step(self): self.rates.append(self.opt.hypers[0]['lr'])


def _torch_rates(lr: float, total: int, n_up: int, n_down: int) -> list:
    "The same schedule from torch's `LinearLR` pieces chained by `SequentialLR`"
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    flat = total - n_up - n_down  # steps at `lr` between the two ramps; none in a triangle
    pieces = [torch.optim.lr_scheduler.LinearLR(opt, 1 / n_up, 1., total_iters=n_up - 1)]
    pieces += [torch.optim.lr_scheduler.LinearLR(opt, 1., 1., total_iters=1)] if flat else []
    pieces += [torch.optim.lr_scheduler.LinearLR(opt, n_down / (n_down + 1), 1 / (n_down + 1), total_iters=n_down - 1)]
    milestones = [n_up, total - n_down] if flat else [n_up]
    sched = torch.optim.lr_scheduler.SequentialLR(opt, pieces, milestones=milestones)
    rates = []
    for _ in range(total):
        rates.append(opt.param_groups[0]['lr'])
        opt.step()
        sched.step()
    return rates


def test_warmup_and_anneal_match_torchs_linear_schedulers():
    dls = cifar_dls(synthetic_cifar(80, 16), bs=8, seed=0)  # 10 steps an epoch
    learn = cifar_learner(dls, _tiny(), precision='fp32', ema=0, plateau=dict(patience=100),
                          cbs=[WarmupAnneal(0.2, 0.3)])
    learn.fit(3, 0.1, cbs=(seen := StepRates()))
    assert seen.rates == pytest.approx(_torch_rates(0.1, 30, n_up=6, n_down=9))
    assert learn.opt.hypers[0]['lr'] == pytest.approx(0.1)  # the plateau's own rate is left as it set it
    assert [r['lr'] for r in learn.epoch_record.rows] == pytest.approx(
        [sum(seen.rates[i:i + 10]) / 10 for i in (0, 10, 20)])  # the record shows the rates used


def test_a_plateau_cut_scales_the_rest_of_the_schedule():
    dls = cifar_dls(synthetic_cifar(80, 16), bs=8, seed=0)
    plateau = dict(patience=0, factor=0.5, threshold=100, threshold_mode='abs')  # cuts after every epoch
    learn = cifar_learner(dls, _tiny(), precision='fp32', ema=0, plateau=plateau, cbs=[WarmupAnneal(0.2, 0.3)])
    learn.fit(3, 0.1, cbs=(seen := StepRates()))
    reference = _torch_rates(0.1, 30, n_up=6, n_down=9)
    # the first epoch sets the best loss, each later one cuts: epochs 2 and 3 run at a half and a quarter
    assert seen.rates == pytest.approx([r * 0.5 ** max(0, i // 10 - 1) for i, r in enumerate(reference)])


def test_the_linear_schedule_is_a_triangle_that_no_plateau_cuts(tmp_path):
    from cifar_fastai.run import train
    # a threshold no loss can meet: a plateau with patience 0 would cut after the second epoch
    config = RunConfig(data='sample', epochs=3, bs=100, lr=0.02, schedule='linear', plateau_patience=0,
                       plateau_threshold=0.99, ema=0., interpret=False)
    learn = train(config, tmp_path / 'run', log=lambda *a: None, progress=False, cbs=[seen := StepRates()])
    assert seen.rates == pytest.approx(_torch_rates(0.02, 15, n_up=3, n_down=12))  # 5 steps an epoch
    assert learn.opt.hypers[0]['lr'] == pytest.approx(0.02) and learn.opt.hypers[0]['mom'] == 0.9


@pytest.mark.parametrize('warmup, anneal', [(-0.1, 0.), (0., 1.5), (0.6, 0.6)])
def test_bad_shares_are_named(warmup, anneal):
    with pytest.raises(ValueError, match='warmup|anneal'): WarmupAnneal(warmup, anneal)


@pytest.mark.parametrize('momentum, high, low', [(0.9, 0.95, 0.85), (0.8, 0.85, 0.75)])
def test_one_cycle_cycles_the_momentum_around_the_one_asked_for(tmp_path, momentum, high, low):
    # 0.9, the default, gives fastai's own (0.95, 0.85, 0.95); `--momentum` moves the cycle with it
    from fastai.callback.schedule import combined_cos
    from cifar_fastai.run import train
    config = RunConfig(data='sample', epochs=1, bs=100, lr=0.02, schedule='one-cycle', momentum=momentum, ema=0.,
                       interpret=False)
    learn = train(config, tmp_path / 'run', log=lambda *a: None, progress=False)
    moms = learn.recorder.hps['mom']
    expected = combined_cos(0.25, high, low, high)  # fastai's one-cycle shape (pct_start 0.25)
    assert len(moms) == 5 and moms == pytest.approx([expected(i / 5) for i in range(5)], abs=1e-12)
