"On a CUDA device: mixed precision and its loss scaler, batches from pinned memory, checkpoints, a nccl process group"
# Skipped without CUDA; `scripts/gpu_check.sh` runs them on a GPU (`pytest -m cuda tests/test_gpu.py`).
import json
import math
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fastai.callback.core import Callback, CancelFitException

from cifar_fastai.callbacks import read_metrics
from cifar_fastai.checkpoint import load_checkpoint, restore_checkpoint
from cifar_fastai.collective import all_reduce_sum, broadcast_value, gather_values
from cifar_fastai.learner import cifar_learner
from cifar_fastai.loaders import cifar_dls
from cifar_fastai.precision import DTYPES, autocast_of
from cifar_fastai.run import RunConfig, run_dls, run_learner, train
from tests.helpers import InterruptAfter

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason='needs a CUDA device: torch.cuda.is_available() is False')]

quiet = dict(log=lambda *a: None, progress=False)
LIMIT = 120  # seconds before a hung child process fails the test


def _dls(device: str, num_workers: int = 0):
    "The bundled sample (500 train, 200 test images) on `device`, in fixed order and augmentations"
    return cifar_dls('sample', bs=64, seed=0, device=device, num_workers=num_workers, progress=False)


def _params(model) -> list: return [p.detach().clone() for p in model.parameters()]


class StopAfter(Callback):
    "End the fit after `n` training batches, optimizer steps included"
    def __init__(self, n: int): self.n = n
    def after_batch(self):
        if self.training and self.iter + 1 >= self.n: raise CancelFitException()


@pytest.mark.parametrize('workers', [0, 2])
def test_batches_reach_the_gpu_from_pinned_memory_with_the_pixels_the_cpu_gets(workers):
    # a non-blocking copy whose pinned source is reused too early would deliver another batch's pixels
    gpu, cpu = _dls('cuda', workers), _dls('cpu')
    assert gpu.train.pin_memory and not cpu.train.pin_memory
    x, y = next(iter(gpu.train))
    assert x.device.type == y.device.type == 'cuda' and x.dtype == torch.float32 and x.shape == (64, 3, 32, 32)
    n = 0
    for (xg, yg), (xc, yc) in zip(gpu.valid, cpu.valid, strict=True):  # the test split: no augmentation, in order
        assert xg.device.type == 'cuda' and torch.equal(yg.cpu(), yc)
        assert torch.allclose(xg.cpu(), xc, atol=1e-6)
        n += len(yc)
    assert n == 200


@pytest.mark.parametrize('precision', ['bf16', 'fp16'])
def test_a_fit_on_the_gpu_computes_in_its_precision_and_trains_every_weight(precision):
    learn = cifar_learner(_dls('cuda'), lr=0.02, precision=precision)
    before, seen = _params(learn.model), set()
    hook = learn.model.conv1.register_forward_hook(lambda module, inputs, out: seen.add(out.dtype))
    try:
        with learn.no_bar(), learn.no_logging(): learn.fit(1)
    finally: hook.remove()
    assert seen == {DTYPES[precision]}  # the stem's convolution, in training and in the test pass
    after = list(learn.model.parameters())
    assert all(p.device.type == 'cuda' and torch.isfinite(p).all() for p in after)
    assert all(not torch.equal(a, b) for a, b in zip(before, after))
    row = learn.epoch_record.rows[-1]
    assert math.isfinite(row['train_loss']) and math.isfinite(row['test_loss']) and 0 <= row['test_accuracy'] <= 1
    assert autocast_of(learn).scaler.is_enabled() == (precision == 'fp16')  # fp16 needs loss scaling, bf16 not


def test_an_fp16_step_whose_gradients_overflow_is_skipped_and_its_scale_halved():
    learn = cifar_learner(_dls('cuda'), lr=0.02, precision='fp16')
    # a loss scaled by 2**40 overflows fp16 gradients (largest fp16 number 65504): `GradScaler` must skip the step
    autocast_of(learn).resumed_scaler = {**torch.amp.GradScaler('cuda').state_dict(), 'scale': 2. ** 40}
    before = _params(learn.model)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, cbs=StopAfter(1))
    assert all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters()))
    assert autocast_of(learn).scaler.get_scale() == 2. ** 39  # torch's backoff factor 0.5


@pytest.mark.parametrize('precision', ['bf16', 'fp16'])
def test_a_run_checkpointed_on_the_gpu_restores_onto_it_and_resumes(tmp_path, precision):
    config = RunConfig(data='sample', epochs=2, bs=64, lr=0.02, precision=precision, workers=2, interpret=False)
    with pytest.raises(KeyboardInterrupt): train(config, tmp_path, cbs=[InterruptAfter(1)], **quiet)
    state = load_checkpoint(tmp_path)  # onto the CPU, as `--resume` reads it
    assert state['epoch'] == 1 and (state['scaler'] is not None) == (precision == 'fp16')
    learn = run_learner(run_dls(config, progress=False), config, tmp_path)
    restore_checkpoint(learn, state)
    weights = learn.model.state_dict()
    assert all(weights[k].device.type == 'cuda' for k in state['model'])
    assert all(torch.equal(weights[k].cpu(), v) for k, v in state['model'].items())
    moments = [v for s in learn.opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    assert len(moments) == len(list(learn.model.parameters()))  # fastai's SGD: one momentum buffer per parameter
    assert all(v.device.type == 'cuda' for v in moments + list(learn.ema.avg))
    resumed = train(None, tmp_path, resume=True, **quiet)  # a first step mixing devices would fail here
    rows = read_metrics(tmp_path / 'metrics.csv')
    assert [r['epoch'] for r in rows] == [1, 2] and all(math.isfinite(r['test_loss']) for r in rows)
    assert all(p.device.type == 'cuda' for p in resumed.model.parameters())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _world_of_one(rank: int, port: int, out: Path):
    "One process of a data-parallel launch on this GPU: the package's process group, its collectives, a loader"
    # one process: NCCL refuses two ranks on the same GPU, and accelerate wraps no DDP around a world of one
    os.environ.update(RANK='0', LOCAL_RANK='0', WORLD_SIZE='1', LOCAL_WORLD_SIZE='1', MASTER_ADDR='127.0.0.1',
                      MASTER_PORT=str(port))
    from cifar_fastai.distributed import CollectiveDL, start_process_group  # needs accelerate, as a launch does
    start_process_group()
    try:
        device = torch.device('cuda', torch.cuda.current_device())
        total = all_reduce_sum(torch.arange(3., device=device))
        batches = list(CollectiveDL(_dls('cuda').valid, device=device))
        seen = dict(backend=str(dist.get_backend()), total=total.tolist(), total_on=total.device.type,
                    broadcast=broadcast_value({'from': 0}), gathered=gather_values('x'),
                    batches_on=sorted({t.device.type for b in batches for t in b}),
                    labels=torch.cat([y for _, y in batches]).tolist())
    finally: dist.destroy_process_group()
    (out / 'world-of-one.json').write_text(json.dumps(seen))


def test_a_data_parallel_process_group_runs_its_collectives_over_nccl(tmp_path):
    context = mp.start_processes(_world_of_one, args=(_free_port(), tmp_path), nprocs=1, join=False,
                                 start_method='spawn')
    deadline = time.monotonic() + LIMIT
    while not context.join(timeout=1):  # raises the child's exception, with its traceback, if it failed
        if time.monotonic() > deadline:
            for p in context.processes: p.kill()
            pytest.fail(f'the process of the data-parallel launch did not end within {LIMIT} s')
    seen = json.loads((tmp_path / 'world-of-one.json').read_text())
    assert 'nccl' in seen['backend']
    assert seen['total'] == [0., 1., 2.] and seen['total_on'] == 'cuda'
    assert seen['broadcast'] == {'from': 0} and seen['gathered'] == ['x']
    assert seen['batches_on'] == ['cuda']
    assert seen['labels'] == torch.cat([y for _, y in _dls('cpu').valid]).tolist()  # the whole test split, in order
