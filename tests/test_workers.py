"Loader workers draw their own augmentations: apart from each other, anew each epoch, the same again from a seed"
from types import SimpleNamespace

import numpy as np
import torch

from cifar_fastai.checkpoint import rng_state, set_rng_state
from cifar_fastai.data import Cifar10
from cifar_fastai.distributed import seed_by_rank
from cifar_fastai.loaders import cifar_dls
from tests.helpers import CLASSES

WORKERS, BS, N = 2, 8, 32  # 4 batches an epoch: worker 0 makes batches 0 and 2, worker 1 batches 1 and 3


def _one_picture() -> Cifar10:
    "`N` copies of one lopsided picture, so that two batches differ only where their augmentations do"
    img = np.broadcast_to(np.arange(32, dtype=np.uint8)[None, :, None] * 7, (32, 32, 3))
    x = np.repeat(img[None], N, 0)
    return Cifar10(x, np.arange(N) % 10, x[:2].copy(), np.zeros(2, np.int64), CLASSES, 'one picture')


def _dls(seed=0, shuffle=False):
    return cifar_dls(_one_picture(), bs=BS, seed=seed, num_workers=WORKERS, shuffle=shuffle, device='cpu')


def _epoch(dl) -> list:
    "Images and labels of each batch of an epoch of `dl`, flat"
    return [torch.cat([x.as_subclass(torch.Tensor).flatten(), y.as_subclass(torch.Tensor)]) for x, y in dl]


def _same(a: list, b: list) -> list: return [torch.equal(x, y) for x, y in zip(a, b, strict=True)]


def test_workers_draw_apart_from_each_other_and_anew_each_epoch():
    dls = _dls()
    assert dls.train.fake_l.num_workers == WORKERS
    first, second = _epoch(dls.train), _epoch(dls.train)
    assert _same(first, second) == [False] * 4  # each batch of the second epoch is new
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[2], first[3])  # worker 0 against worker 1


def test_the_same_seed_gives_the_same_epochs_and_another_seed_others():
    runs = [_epoch(dls.train) + _epoch(dls.train) for dls in (_dls(0), _dls(0), _dls(1))]
    assert all(_same(runs[0], runs[1])) and not any(_same(runs[0], runs[2]))


def test_each_data_parallel_rank_gives_its_workers_their_own_augmentations():
    ranks = []
    for rank in (0, 1, 1):
        dls = _dls()
        seed_by_rank(dls, rank)
        ranks.append(_epoch(dls.train))
    assert not any(_same(ranks[0], ranks[1])) and all(_same(ranks[1], ranks[2]))


def test_workers_resume_from_the_states_a_checkpoint_saves():
    # what --resume does: a fresh loader takes the saved random states, and draws the epoch that would have followed
    dls = _dls(shuffle=True)
    _epoch(dls.train)
    state = rng_state(SimpleNamespace(dls=dls))
    following = _epoch(dls.train)
    resumed = _dls(seed=7, shuffle=True)  # another seed: whatever matches comes from the saved states
    set_rng_state(SimpleNamespace(dls=resumed), state)
    assert all(_same(_epoch(resumed.train), following))


def test_the_workers_of_a_data_parallel_loader_draw_apart_too(tmp_path):
    # fastai sets up each worker on the `DistributedDL` wrapper of a data-parallel fit: it must hand that to our loader
    import torch.distributed as dist
    from cifar_fastai.distributed import CollectiveDL
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "group"}', rank=0, world_size=1)
    try:
        dl = CollectiveDL(_dls().train, rank=0, world_size=1)
        first, second = _epoch(dl), _epoch(dl)
    finally: dist.destroy_process_group()
    assert _same(first, second) == [False] * 4 and not torch.equal(first[0], first[1])
