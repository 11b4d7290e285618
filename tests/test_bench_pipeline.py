"scripts/bench_pipeline.py: the plain loop trains what fastai's `fit_one_cycle` trains, without fastai"
import argparse

import pytest
import torch
from fastai.test_utils import synth_learner

from cifar_fastai.models import resnet18
from tests.helpers import load_script


@pytest.fixture(scope='module')
def bench(): return load_script('bench_pipeline')


def test_the_plain_loops_schedule_follows_fastais_one_cycle(bench):
    # the reference: the rates and momenta fastai's own scheduler set, as its Recorder saw them batch by batch
    learn = synth_learner(n_trn=10, lr=0.1)  # 10 batches of 16 an epoch
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(20, 0.1)
    lrs, moms = learn.recorder.lrs, learn.recorder.hps['mom']
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.95)
    sched, ours = bench.one_cycle(opt, 0.1, len(lrs)), []
    for _ in lrs:
        ours.append((opt.param_groups[0]['lr'], opt.param_groups[0]['momentum']))
        opt.step()
        sched.step()
    assert len(lrs) == 200
    # torch counts the phases' ends a step earlier than fastai's fraction of the fit: within 2 % of the peak, each step
    assert [lr for lr, _ in ours] == pytest.approx(lrs, abs=0.002)
    assert [m for _, m in ours] == pytest.approx(moms, abs=0.002)
    assert ours[0][0] == pytest.approx(0.1 / 25) and max(lr for lr, _ in ours) == pytest.approx(0.1)
    assert ours[-1][0] < 1e-4  # down to about lr/1e5 at the end, as fastai


def test_weight_decay_spares_batchnorm_and_biases_as_fastai_does(bench):
    model = resnet18()
    decay, spared = bench.param_groups(model)
    n_decay = sum(p.numel() for p in decay['params'])
    convs = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert n_decay == convs + 512 * 10  # every conv weight and the linear layer's 512 x 10 weights
    assert sum(p.numel() for p in spared['params']) == 11_173_962 - n_decay  # BN scales and shifts, the linear bias
    assert (decay['weight_decay'], spared['weight_decay']) == (5e-4, 0.)


def test_a_contender_is_named_pipeline_colon_precision(bench):
    assert bench.contender('plain:bf16') == ('plain', 'bf16')
    for bad in ('plain', 'ours:fp16', 'keras:fp32'):
        with pytest.raises(argparse.ArgumentTypeError, match='PIPELINE:PRECISION'): bench.contender(bad)
