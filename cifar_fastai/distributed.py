"Data-parallel training through fastai's Accelerate integration: nccl between CUDA devices, gloo between CPU processes"
import os
import re
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist
from fastai.learner import Learner
from fastai.torch_core import rank_distrib
from torch import nn

from cifar_fastai.collective import broadcast_value, unwrap
from cifar_fastai.errors import ConfigError, MissingPackageError, PeerFailedError
from cifar_fastai.loaders import AsyncCopy
from cifar_fastai.transforms import AlbumentationsTransform

try: from fastai.distributed import DistributedDL, DistributedTrainer
except (ImportError, NameError) as e:  # fastai.distributed names accelerate's `Accelerator` when it is imported
    raise MissingPackageError("Data-parallel training needs Hugging Face Accelerate: pip install accelerate") from e

__all__ = ['start_process_group', 'broadcast_value', 'single_process', 'CollectiveDL',
           'DataParallelTrainer', 'peer_failures', 'data_parallel', 'seed_by_rank', 'revert_sync_batchnorm']


def _check_sync_bn(sync_bn: bool):
    if sync_bn and not torch.cuda.is_available():
        raise ConfigError("--sync-bn needs CUDA devices: torch's SyncBatchNorm has no CPU kernel "
                          "(aten::batch_norm_stats); leave it out when training on CPU processes")


def start_process_group(sync_bn: bool = False):
    "Join the processes of this launch (torchrun, `accelerate launch`): nccl, one CUDA device each, or gloo on CPU"
    # accelerate's `PartialState` starts the group and sets each process's CUDA device, in place of fastai's
    # `setup_distrib`, which assumes CUDA: https://github.com/fastai/fastai/blob/master/fastai/distributed.py
    from accelerate import PartialState
    _check_sync_bn(sync_bn)
    if not torch.cuda.is_available(): return PartialState(cpu=True, backend='gloo')
    return PartialState(backend='cuda:nccl,cpu:gloo')  # gloo beside nccl for CPU tensors: `CollectiveDL`'s order


@contextmanager
def single_process():
    "Inside the block fastai works on this process alone, e.g. rank 0's `lr_find` or its interpretation of the run"
    # fastai gathers every loss, metric and prediction across processes whenever `WORLD_SIZE` > 1 (`maybe_gather` in
    # https://github.com/fastai/fastai/blob/master/fastai/torch_core.py), and would wait for the others forever
    before = os.environ.get('WORLD_SIZE')
    os.environ['WORLD_SIZE'] = '1'
    try: yield
    finally:
        if before is None: os.environ.pop('WORLD_SIZE', None)
        else: os.environ['WORLD_SIZE'] = before


def _collective_device() -> torch.device:
    "The device whose tensors the process group exchanges: the current CUDA device for nccl alone, else the CPU"
    return torch.device('cuda', torch.cuda.current_device()) if dist.get_backend() == 'nccl' else torch.device('cpu')


class CollectiveDL(AsyncCopy, DistributedDL):
    "fastai's `DistributedDL` (each process its share of rank 0's order) with any backend; `idxs`: this epoch's share"
    idxs = None

    def wif(self): self.dl.wif()  # in a loader worker, which fastai set up on this wrapper: the loader's own set-up

    def get_idxs(self):
        self.idxs = super().get_idxs()
        return self.idxs

    def _broadcast(self, t, rank):
        # fastai's `DistributedDL._broadcast` puts the indices on `.cuda()` (nccl only), which fails on CPU processes:
        # https://github.com/fastai/fastai/blob/master/fastai/distributed.py
        t = torch.tensor(t, dtype=torch.long, device=_collective_device())
        dist.broadcast(t, rank)
        return t.cpu().tolist()


class DataParallelTrainer(DistributedTrainer):
    "fastai's `DistributedTrainer` with `CollectiveDL` loaders, and plain `BatchNorm2d` back in the model after the fit"
    def before_fit(self):
        super().before_fit()
        # fastai shares out every loader; the test split of a held-out run stays whole: `TestPass` predicts all of it
        # on each process, as the loop's own validation on the test split is added up over them
        self.learn.dls.loaders[2:] = self.old_dls[2:]

    def _wrap_dl(self, dl):
        return dl if isinstance(dl, DistributedDL) else CollectiveDL(dl, device=self.learn.model.device)

    def after_fit(self):
        # fastai's takes `model.module`, which fails when `after_cancel_fit` has already unwrapped it
        self.learn.model = unwrap(self.learn.model)
        if hasattr(self, 'old_dls'): self.learn.dls.loaders = self.old_dls
        if self.sync_bn: self.learn.model = revert_sync_batchnorm(self.learn.model)

    def after_cancel_fit(self): self.after_fit()  # a fit ended by an exception puts back the model and loaders too


@contextmanager
def peer_failures():
    "In the block, a collective that fails because another process ended raises `PeerFailedError` in one line"
    # gloo's collectives fail within a second of another process's exit (as the command line does on an error), with
    # a message about the connection; nccl's wait for their timeout, but torchrun stops the other processes.
    try: yield
    except Exception as e:
        if not _lost_peer(e): raise
        raise PeerFailedError(f"process {rank_distrib()} stops: another process of this data-parallel run failed "
                              f"({_gist(e)}); its own message says why") from e


def _lost_peer(e: Exception) -> bool:
    "Whether `e` is a collective failing because another process left the group"
    # gloo's words, e.g. 'Connection closed by peer [127.0.0.1]:5863' (third_party/gloo/gloo/transport/tcp/pair.cc)
    return isinstance(e, dist.DistError) or any(w in str(e) for w in ('closed by peer', 'reset by peer', 'Broken pipe'))


def _gist(e: Exception) -> str:
    "What `e` says happened: its last line, without gloo's source location and advice"
    line = (str(e).strip().splitlines() or [type(e).__name__])[-1].strip()
    return re.sub(r'^\[[^\]]*\]\s*', '', line).split('. ')[0]


@contextmanager
def data_parallel(learn: Learner, sync_bn: bool = False):
    "Fit `learn` data-parallel in the block: a disjoint share of each epoch per process, gradients averaged by DDP"
    # fastai's `Learner.distrib_ctx` with `DataParallelTrainer` for its `DistributedTrainer`, and augmentations
    # drawn apart on each process (`seed_by_rank`)
    _check_sync_bn(sync_bn)
    seed_by_rank(learn.dls)
    trainer = DataParallelTrainer(sync_bn=sync_bn, cpu=not torch.cuda.is_available())
    learn.add_cb(trainer)
    try:
        with learn.no_bar() if rank_distrib() else nullcontext(): yield learn  # one progress bar, rank 0's
    finally: learn.remove_cb(trainer)


def seed_by_rank(dls, rank: int | None = None):
    "Give the augmentations of process `rank` their own seed: draws shared by all would repeat flips and holes"
    # streams already this rank's (its own, put back from a checkpoint on `--resume`) are left to go on
    rank = rank_distrib() if rank is None else rank
    for t in dls.train.after_item.fs:
        if isinstance(t, AlbumentationsTransform) and t.seed is not None and t.rank != rank: t.set_seed(t.seed, rank)


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    "Undo `nn.SyncBatchNorm.convert_sync_batchnorm` for 2d batch norm, keeping the same parameters and statistics"
    if not isinstance(module, nn.SyncBatchNorm):
        for name, child in module.named_children(): setattr(module, name, revert_sync_batchnorm(child))
        return module
    bn = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
    if module.affine: bn.weight, bn.bias = module.weight, module.bias  # the optimizer keeps these very tensors
    if module.track_running_stats:
        for name in ('running_mean', 'running_var', 'num_batches_tracked'): setattr(bn, name, getattr(module, name))
    return bn.train(module.training)
