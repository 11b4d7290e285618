"A checkpoint restores onto the model's device and dtype, and one written by an older layout resumes as its run went on"
from pathlib import Path

import pytest
import torch
from torch import nn

from cifar_fastai.checkpoint import SkipEpochs, load_checkpoint, restore_checkpoint
from cifar_fastai.ema import EMA
from cifar_fastai.learner import cifar_learner
from cifar_fastai.loaders import cifar_dls
from tests.helpers import synthetic_cifar

# Written by commit 619f03b, the code of the runs in progress when the data path changed, running
# `_learner().fit(3, 0.05, cbs=Checkpoint(run))`: checkpoint.pth is the checkpoint after epoch 1 (copied by an
# `after_epoch` callback of order 80), expected.pth holds the model (the weight average) and the rows after epoch 3.
FIXTURE = Path(__file__).parent / 'data' / 'checkpoint-619f03b'


def _learner(dtype=torch.float32):
    "The fixture's run: 64 synthetic images, bs 16, a tiny CNN, momentum, a weight average, a plateau that halves"
    dls = cifar_dls(synthetic_cifar(64, 32), bs=16, seed=0, device='cpu')
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    return cifar_learner(dls, model=model.to(dtype), lr=0.05, precision='fp32', channels_last=False,
                         ema=EMA(0.9, 1), plateau=dict(factor=0.5, patience=0, threshold=100, threshold_mode='abs'))


def test_a_checkpoint_of_the_older_layout_resumes_where_its_run_went():
    state = load_checkpoint(FIXTURE)
    assert len(state['rng']['augs']) == 6  # the numpy and Python generators of Compose, HorizontalFlip, CoarseDropout
    learn = _learner()
    done = restore_checkpoint(learn, state)
    with learn.no_bar(), learn.no_logging(): learn.fit(3, [h['lr'] for h in learn.opt.hypers], cbs=SkipEpochs(done))
    expected = torch.load(FIXTURE / 'expected.pth', weights_only=True)
    rows = learn.epoch_record.rows
    assert done == 1 and [r['epoch'] for r in rows] == [1, 2, 3]
    assert [r['lr'] for r in rows] == pytest.approx([0.05, 0.05, 0.025])  # the plateau's state came back
    for key in ('train_loss', 'train_accuracy', 'test_loss', 'test_accuracy'):
        assert [r[key] for r in rows] == pytest.approx([r[key] for r in expected['rows']], rel=1e-5), key
    for k, v in learn.model.state_dict().items():
        assert torch.allclose(v.double(), expected['model'][k].double(), atol=1e-6), k


@pytest.mark.filterwarnings('ignore:.*which is a no-op')  # torch: loading weights into a meta model copies nothing
@pytest.mark.parametrize('device, dtype', [('meta', torch.float32), ('cpu', torch.float64)])
def test_optimizer_state_and_weight_average_are_restored_beside_the_model(device, dtype):
    # a checkpoint loads on the CPU; a GPU's first step after --resume would mix devices if the momentum buffers or the
    # average stayed there. A `meta` model stands in for the GPU, a float64 one shows the dtype follows too.
    learn = _learner(dtype)
    learn.model.to(device)
    restore_checkpoint(learn, load_checkpoint(FIXTURE))
    params = list(learn.model.parameters())
    state = [v for p in params for v in learn.opt.state[p].values() if isinstance(v, torch.Tensor)]
    assert len(state) == len(params)  # fastai's SGD keeps one momentum buffer per parameter
    assert all(t.device.type == device and t.dtype == dtype for t in state)
    model_tensors = params + list(learn.model.buffers())
    assert len(learn.ema.avg) == len(model_tensors)
    assert all(a.device.type == device and a.dtype == t.dtype for a, t in zip(learn.ema.avg, model_tensors))
    assert any(a.dtype == dtype for a in learn.ema.avg)
