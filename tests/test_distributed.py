"Data-parallel training on two CPU processes (gloo): disjoint shares, one set of weights, one run folder, rank 0's lr"
import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
from fastai.callback.core import Callback
from torch import nn

from cifar_fastai.distributed import broadcast_value, revert_sync_batchnorm, single_process, start_process_group
from tests.helpers import InterruptAfter, tiny_models

WORLD = 2
LIMIT = 900  # seconds before a hang fails the test; the launch takes about 20 on two busy cores


class DrawnIndices(Callback):
    "Write the item indices this process drew, and how many it trained on, to `folder`/drawn-<rank>.json"
    order = 90

    def __init__(self, folder: Path): self.folder = Path(folder)
    def before_fit(self): self.drawn, self.trained = {'train': [], 'test': []}, 0
    def after_train(self): self.drawn['train'] += list(self.dl.idxs)
    def after_validate(self): self.drawn['test'] += list(self.dl.idxs)

    def after_batch(self):
        if self.training: self.trained += len(self.yb[0])

    def after_fit(self):
        rank = torch.distributed.get_rank()
        (self.folder / f'drawn-{rank}.json').write_text(json.dumps({**self.drawn, 'trained': self.trained}))


class DrawnBatches(Callback):
    "Write a fingerprint (the sum) of each augmented training batch per epoch to `folder`/batches-`run`-<rank>.json"
    order = 90

    def __init__(self, folder: Path, run: str): self.folder, self.run = Path(folder), run
    def before_fit(self): self.sums = {}

    def after_batch(self):
        if self.training: self.sums.setdefault(self.epoch, []).append(self.xb[0].double().sum().item())

    def after_fit(self):
        path = self.folder / f'batches-{self.run}-{torch.distributed.get_rank()}.json'
        path.write_text(json.dumps(self.sums))


class CountTested(Callback):
    "Write how many test images this process counted in its last epoch, plain and flipped, to `folder`/tested-<rank>"
    order = 90

    def __init__(self, folder: Path): self.folder = Path(folder)

    def after_epoch(self):
        sums, rank = self.learn.epoch_record.sums, torch.distributed.get_rank()
        (self.folder / f'tested-{rank}.json').write_text(json.dumps({k: int(sums[k][2]) for k in ('test', 'tta')}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _save(learn, path: Path):
    torch.save({k: v.clone() for k, v in learn.model.state_dict().items()}, path)


def _worker(rank: int, port: int, tmp: Path):
    "One process of the launch, as torchrun would start it: tiny models, as what is shared does not depend on them"
    with tiny_models(): _runs(rank, port, tmp)


def _runs(rank: int, port: int, tmp: Path):
    "A found-lr run, a whole one and its twin interrupted and resumed, a refused folder, a NaN, an error on process 1"
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD),
                      MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    from cifar_fastai.callbacks import NonFiniteLossError
    from cifar_fastai.run import ConfigError, RunConfig, train
    quiet = dict(log=lambda *a: None)
    # bs 50: each process's 250 training images make whole batches, so nothing is dropped
    config = RunConfig(data='sample', epochs=1, bs=50, lr='find', lr_find_iters=25, interpret=False)
    learn = train(config, tmp / ('run' if rank == 0 else f'run-of-rank-{rank}'), cbs=[DrawnIndices(tmp)], **quiet)
    _save(learn, tmp / f'weights-{rank}.pth')
    (tmp / f'seen-{rank}.json').write_text(json.dumps({
        'path': str(learn.path), 'lr': learn.opt.hypers[-1]['lr'], 'broadcast': broadcast_value({'from': rank})}))
    held_out = RunConfig(data='sample', epochs=1, bs=50, lr=0.02, valid_pct=0.2, tta=True, interpret=False)
    train(held_out, tmp / 'held', cbs=[CountTested(tmp)], **quiet)
    resumable = RunConfig(data='sample', epochs=2, bs=50, lr=0.02, interpret=False)
    train(resumable, tmp / 'whole', cbs=[DrawnBatches(tmp, 'whole')], **quiet)
    with pytest.raises(KeyboardInterrupt): train(resumable, tmp / 'cut', cbs=[InterruptAfter(1)], **quiet)
    torch.distributed.barrier()  # rank 0 has written the checkpoint
    resumed = train(resumable, tmp / 'cut', resume=True, cbs=[DrawnBatches(tmp, 'resumed')], **quiet)
    _save(resumed, tmp / f'resumed-{rank}.pth')
    with pytest.raises(ConfigError) as refused: train(resumable, tmp / 'cut', **quiet)  # rank 0's folder holds a run
    (tmp / f'refused-{rank}.txt').write_text(str(refused.value))
    with pytest.raises(NonFiniteLossError) as nan:
        train(resumable, tmp / 'nan', cbs=[FailOnRank1(float('nan'))], **quiet)
    (tmp / f'nan-{rank}.txt').write_text(str(nan.value))
    try: train(resumable, tmp / 'bug', cbs=[FailOnRank1(RuntimeError('a bug on rank 1'))], **quiet)
    except Exception as e:  # the process ends with it, as the command line does
        (tmp / f'failed-{rank}.txt').write_text(f'{type(e).__name__}: {e}')
        raise


class FailOnRank1(Callback):
    "At the second batch, make the training loss of process 1 `error` (a float), or raise `error` there"
    order = -10  # before `StopOnNonFinite` (-5) looks at the loss
    def __init__(self, error): self.error = error
    def after_loss(self):
        if torch.distributed.get_rank() != 1 or not self.training or self.iter != 1: return
        if not isinstance(self.error, float): raise self.error
        self.learn.loss = torch.tensor(self.error)


@pytest.fixture(scope='module')
def launch(tmp_path_factory):
    "Run `_worker` on two CPU processes with gloo; the folder they wrote in"
    import torch.multiprocessing as mp
    tmp = tmp_path_factory.mktemp('data_parallel')
    context = mp.start_processes(_worker, args=(_free_port(), tmp), nprocs=WORLD, join=False, start_method='spawn')
    deadline = time.monotonic() + LIMIT  # not `context.join`, which would end the others when one process fails
    while any(p.exitcode is None for p in context.processes):
        if time.monotonic() > deadline:
            for p in context.processes: p.kill()
            pytest.fail(f'the {WORLD} processes did not finish within {LIMIT} s')
        time.sleep(1)
    (tmp / 'exitcodes.json').write_text(json.dumps([p.exitcode for p in context.processes]))
    return tmp


def _read(path: Path): return json.loads(path.read_text())


def test_processes_draw_disjoint_shares_that_cover_each_epoch(launch):
    drawn = [_read(launch / f'drawn-{r}.json') for r in range(WORLD)]
    for split, n in (('train', 500), ('test', 200)):
        shares = [set(d[split]) for d in drawn]
        assert [len(d[split]) for d in drawn] == [n // WORLD] * WORLD
        assert not shares[0] & shares[1]
        assert shares[0] | shares[1] == set(range(n))
    assert [d['trained'] for d in drawn] == [500 // WORLD] * WORLD


def test_with_a_held_out_split_every_process_tests_on_all_of_the_test_split(launch):
    # the loop validates each process on its share of the held-out images; the test pass is not shared out
    assert [_read(launch / f'tested-{r}.json') for r in range(WORLD)] == [{'test': 200, 'tta': 200}] * WORLD


def test_weights_are_identical_on_every_process(launch):
    ws = [torch.load(launch / f'weights-{r}.pth') for r in range(WORLD)]
    assert ws[0].keys() == ws[1].keys()
    for k in ws[0]: assert torch.equal(ws[0][k], ws[1][k]), k
    assert not any('module.' in k for k in ws[0])


def test_only_rank0_writes_one_run_folder(launch):
    assert sorted(p.name for p in launch.iterdir() if p.is_dir()) == ['bug', 'cut', 'held', 'nan', 'run', 'whole']
    assert {'config.json', 'metrics.csv', 'checkpoint.pth', 'model.pth', 'export.pkl', 'lr_find.png'} <= {
        p.name for p in (launch / 'run').iterdir()}
    assert [_read(launch / f'seen-{r}.json')['path'] for r in range(WORLD)] == [str(launch / 'run')] * WORLD
    config = _read(launch / 'run' / 'config.json')
    assert config['processes'] == WORLD
    assert len((launch / 'run' / 'metrics.csv').read_text().splitlines()) == 2  # header and one epoch, written once


def test_lr_found_on_rank0_reaches_every_process(launch):
    config = _read(launch / 'run' / 'config.json')
    assert config['lr_used'] == config['lr_mult'] * config['lr_suggestions']['minimum']
    assert config['lr_used'] != 0.01  # the placeholder before the finder
    seen = [_read(launch / f'seen-{r}.json') for r in range(WORLD)]
    assert [s['lr'] for s in seen] == [config['lr_used']] * WORLD
    assert [s['broadcast'] for s in seen] == [{'from': 0}] * WORLD


def test_resume_continues_on_every_process_from_rank0s_checkpoint(launch):
    from cifar_fastai.callbacks import read_metrics
    assert [r['epoch'] for r in read_metrics(launch / 'cut' / 'metrics.csv')] == [1, 2]
    ws = [torch.load(launch / f'resumed-{r}.pth') for r in range(WORLD)]
    for k in ws[0]: assert torch.equal(ws[0][k], ws[1][k]), k
    final = torch.load(launch / 'cut' / 'model.pth')
    for k in ws[0]: assert torch.equal(ws[0][k], final[k]), k


def test_after_resume_each_process_draws_the_augmentations_it_would_have_drawn(launch):
    whole, resumed = ([_read(launch / f'batches-{name}-{r}.json') for r in range(WORLD)]
                      for name in ('whole', 'resumed'))
    assert [list(r) for r in resumed] == [['1']] * WORLD  # the second epoch alone
    assert [r['1'] for r in resumed] == [w['1'] for w in whole]  # as the run that was not stopped drew them


def test_rank0_refusing_the_folder_stops_every_process_with_its_message(launch):
    said = f"{launch / 'cut'} already holds a run: continue it with --resume {launch / 'cut'}, or choose another --out"
    assert [(launch / f'refused-{r}.txt').read_text() for r in range(WORLD)] == [said] * WORLD


def test_a_nan_on_one_process_stops_every_process_at_that_batch(launch):
    assert [(launch / f'nan-{r}.txt').read_text().split(' the learning rate')[0] for r in range(WORLD)] == [
        'The training loss became non-finite on 1 of the 2 processes at epoch 1, batch 2:',
        'The training loss became nan on 1 of the 2 processes at epoch 1, batch 2:']


def test_an_error_on_one_process_ends_every_process_with_a_line_that_says_so(launch):
    failed = [(launch / f'failed-{r}.txt').read_text() for r in range(WORLD)]
    assert failed[1].endswith('a bug on rank 1')  # fastai prefixes which callback raised it
    assert failed[0].startswith('PeerFailedError: process 0 stops: another process of this data-parallel run failed (')
    assert len(failed[0].splitlines()) == 1 and _read(launch / 'exitcodes.json') == [1] * WORLD


def test_revert_sync_batchnorm_gives_plain_batchnorm_with_the_same_tensors():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.ReLU(), nn.BatchNorm2d(4)))
    model(torch.randn(8, 3, 6, 6))  # running statistics away from their defaults
    before = {k: v.clone() for k, v in model.state_dict().items()}
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    weight = synced[1].weight
    plain = revert_sync_batchnorm(synced).eval()
    assert [type(m) for m in plain.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] == [nn.BatchNorm2d] * 2
    assert plain[1].weight is weight  # the optimizer's tensor, not a copy
    for k, v in plain.state_dict().items(): assert torch.equal(v, before[k]), k


def test_sync_bn_on_cpu_says_it_needs_cuda(monkeypatch):
    from cifar_fastai.run import ConfigError
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)  # a CPU-only machine, on a GPU host too
    with pytest.raises(ConfigError, match='--sync-bn needs CUDA'): start_process_group(sync_bn=True)


def test_broadcast_and_single_process_are_no_ops_in_one_process(monkeypatch):
    monkeypatch.setenv('WORLD_SIZE', '2')
    with single_process(): assert os.environ['WORLD_SIZE'] == '1'
    assert os.environ['WORLD_SIZE'] == '2'
    assert broadcast_value({'lr': 0.1}) == {'lr': 0.1}
