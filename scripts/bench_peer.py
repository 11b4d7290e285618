"""How do two published fast CIFAR-10 recipes do on our data and machine? airbench94 and a ResNet18, in plain PyTorch

Each recipe trains on the arrays `cifar-fastai train` reads (`read_cifar10(--data)`) with no fastai in the loop, and
is scored on the test split plainly and with its own test-time augmentation (TTA). It prints, as a markdown table,
the epochs, the minutes of training (building the model, whitening included, and the steps; not the scoring) and
both test accuracies; `--out FILE` keeps them, with the setting, as JSON. Per-epoch lines go to stderr. Both recipes
are our own code, written from their published hyperparameters (each constant below names its source), not copied:
  airbench94  Keller Jordan, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU" (arXiv 2404.00498), the airbench94
              method of KellerJordan/cifar10-airbench: a frozen patch-whitening stem, three conv blocks, Nesterov SGD
              with lookahead, alternating flip and 2-pixel translation, 9.9 epochs at batch 1024; TTA: the image,
              its mirror and both translated by one pixel, weighted. 94.01 % mean on the official arrays (paper).
  resnet18    the CIFAR ResNet18 of `cifar_fastai.models` with airbench's ResNet18 baseline: batch 500, Nesterov SGD
              peaking at 0.2 on a linear triangle, flip, 4-pixel translation and a 12x12 cutout, 26 epochs; TTA:
              flip. 93.4 % on the official arrays (BENCHMARKS.md). Our data is a JPEG copy of CIFAR-10 (quality 75),
              which costs accuracy at the top (README, BENCHMARKS.md: what JPEG costs).
Both average the views' logits for TTA, as airbench does (`cifar-fastai evaluate --tta` averages probabilities).

    python scripts/bench_peer.py --data ../shared/data/cifar10 --out docs/results/peer/peer.json
    python scripts/bench_peer.py --data sample --n-train 500 --n-test 200 --epochs-airbench94 1 --epochs-resnet18 1
"""
import argparse
import json
import math
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cifar_fastai.data import Cifar10, read_cifar10
from cifar_fastai.io import atomic_write
from cifar_fastai.machine import versions
from cifar_fastai.models import resnet18
from cifar_fastai.transforms import CIFAR10_MEAN, CIFAR10_STD  # the training set's, computed over the official arrays

#############################################
#       Hyperparameters, with sources       #
#############################################
# "paper" is arXiv 2404.00498 (v2), section named by title; "airbench94.py" is the hyperparameter block of the script
# released with it (KellerJordan/cifar10-airbench), which the values below were checked against on 2026-12-05.


@dataclass(frozen=True)
class Airbench94:
    "airbench94's hyperparameters; rates and decay in the paper's decoupled form (per 1024 examples)"
    epochs: float = 9.9          # the 10th epoch stops at 90 % of its steps (airbench94.py)
    bs: int = 1024               # images a step (paper, Methods)
    lr: float = 11.5             # per 1024 examples, momentum's gain taken out (airbench94.py)
    momentum: float = 0.85       # Nesterov (airbench94.py)
    wd: float = 0.0153           # decay per 1024 examples, decoupled from the rate (airbench94.py). Not
                                 # David Page's "5e-4 x batch size" (cifar10-fast), which airbench's form replaces
    bias_lr: float = 64.         # BatchNorm biases' rate over the other parameters' (paper, Methods: BN biases)
    label_smoothing: float = 0.2  # (paper, Methods)
    warmup: float = 0.23         # triangle: the rate's multiplier goes linearly from `lr_start` to 1 over this share
    lr_start: float = 0.2        # of the steps, then linearly to `lr_end` at the last (airbench94.py; the
    lr_end: float = 0.07         # paper says "triangular")
    translate: int = 2           # pixels of random translation after reflect padding (paper, Methods)
    widths: tuple = (64, 256, 256)  # the three blocks' channels (paper, Methods: network architecture)
    stem: int = 24               # 2x2 whitening conv: 12 eigenvector filters and their negatives (paper, Whitening)
    whiten_eps: float = 5e-4     # added to the patch covariance's eigenvalues (airbench94.py)
    whiten_images: int = 5000    # training images whose 2x2 patches set the whitening (airbench94.py)
    whiten_bias_epochs: int = 3  # the stem's bias trains for this many epochs, then freezes (paper, Whitening)
    bn_momentum: float = 0.6     # share of the running statistics kept each step; torch's momentum is 1 - 0.6
                                 # (airbench94.py)
    bn_eps: float = 1e-12        # (airbench94.py)
    out_scale: float = 1 / 9     # the head's logits are multiplied by this (airbench94.py)
    lookahead_every: int = 5     # steps between lookahead updates (paper, Lookahead; airbench94.py)
    lookahead_decay: float = 0.95 ** 5  # slow weights' decay at the end, rising as (step / steps) ** 3 from 0
                                        # (airbench94.py)


@dataclass(frozen=True)
class ResNet18Recipe:
    "airbench's ResNet18 baseline (KellerJordan/cifar10-airbench), as the task for this script gives it"
    # BENCHMARKS.md (diag-ab20) and docs/recipes.md quote the same batch, peak, cutout and triangle
    epochs: int = 26             # the baseline's budget: 93.4 % on the official arrays (BENCHMARKS.md)
    bs: int = 500
    lr: float = 0.2              # peak rate on the batch's mean loss
    momentum: float = 0.9        # Nesterov
    wd: float = 5e-4             # torch's L2 on every parameter (unsure whether the recipe spares BatchNorm)
    warmup: float = 0.2          # linear from 0 to the peak over 20 % of the steps, then linearly to 0
    translate: int = 4           # pixels of random translation after reflect padding
    cutout: int = 12             # a 12x12 hole in every image
    label_smoothing: float = 0.  # none: the recipe names none


#############################################
#                 Data                      #
#############################################

class Arrays(NamedTuple):
    "Training and test images as normalised float (N, 3, 32, 32) tensors, labels as int64"
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def first_of_each_class(y: np.ndarray, n: int | None, n_classes: int, option: str) -> np.ndarray:
    "Indices of the first `n`/`n_classes` images of each class of `y`, in their order; all of them if `n` is None"
    if n is None: return np.arange(len(y))
    per_class = n // n_classes
    if n <= 0 or per_class * n_classes != n:
        raise ValueError(f'{option} {n}: give a positive multiple of {n_classes}, the number of classes')
    keep = [np.flatnonzero(y == c)[:per_class] for c in range(n_classes)]
    if short := [c for c, k in enumerate(keep) if len(k) < per_class]:
        raise ValueError(f'{option} {n}: classes {short} hold fewer than {per_class} images; ask for fewer')
    return np.sort(np.concatenate(keep))


def normalise(x: np.ndarray) -> torch.Tensor:
    "(N, 32, 32, 3) uint8 images as (N, 3, 32, 32) float32, less the CIFAR-10 mean, over the CIFAR-10 std"
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(255).contiguous()
    return t.sub_(torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)).div_(torch.tensor(CIFAR10_STD).view(1, 3, 1, 1))


def as_arrays(data: Cifar10, n_train: int | None = None, n_test: int | None = None) -> Arrays:
    "The first `n_train`/10 training and `n_test`/10 test images of each class of `data`, as tensors"
    tr = first_of_each_class(data.train_y, n_train, len(data.classes), '--n-train')
    te = first_of_each_class(data.test_y, n_test, len(data.classes), '--n-test')
    return Arrays(normalise(data.train_x[tr]), torch.from_numpy(data.train_y[tr]), normalise(data.test_x[te]),
                  torch.from_numpy(data.test_y[te]))


#############################################
#       Augmentation of a whole batch       #
#############################################

def flip_where(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    "The images of `x` mirrored left to right where `mask` is true"
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


def alternating_flips(first: torch.Tensor, epoch: int) -> torch.Tensor:
    "Which images epoch `epoch` (from 0) mirrors: a random half `first` in even epochs, the others in odd ones"
    # "alternating flip" (paper, Methods): every image is seen both ways in any two epochs in a row
    return first if epoch % 2 == 0 else ~first


def translate(x: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    "Each image moved by up to `pad` pixels each way at random, the edges filled by reflection"
    n, c, h, w = x.shape
    padded = F.pad(x, (pad,) * 4, mode='reflect')
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n, 1), generator=g)
    rows, cols = (dy + torch.arange(h))[:, None, :, None], (dx + torch.arange(w))[:, None, None, :]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def cutout(x: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    "Each image with a `size`x`size` square, wholly inside it, set to 0 (the mean, after normalisation)"
    n, _, h, w = x.shape
    y0, x0 = torch.randint(0, h - size + 1, (n, 1), generator=g), torch.randint(0, w - size + 1, (n, 1), generator=g)
    rows, cols = torch.arange(h), torch.arange(w)
    inside = ((rows >= y0) & (rows < y0 + size))[:, :, None] & ((cols >= x0) & (cols < x0 + size))[:, None, :]
    return x.masked_fill(inside[:, None], 0.)


#############################################
#            airbench94's network           #
#############################################

class BatchNorm(nn.BatchNorm2d):
    "BatchNorm whose scale stays 1 and whose bias trains (paper, Methods)"
    def __init__(self, n: int, hp: Airbench94):
        super().__init__(n, eps=hp.bn_eps, momentum=1 - hp.bn_momentum)  # torch's momentum: the new batch's share
        self.weight.requires_grad_(False)


class Scale(nn.Module):
    "Multiply by a constant `factor`"
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor: return x * self.factor


def conv_block(n_in: int, n_out: int, hp: Airbench94) -> nn.Sequential:
    "conv3x3 -> max-pool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU (paper, Methods)"
    def conv(a, b): return nn.Conv2d(a, b, 3, padding='same', bias=False)
    return nn.Sequential(conv(n_in, n_out), nn.MaxPool2d(2), BatchNorm(n_out, hp), nn.GELU(),
                         conv(n_out, n_out), BatchNorm(n_out, hp), nn.GELU())


def airbench_net(hp: Airbench94 = Airbench94(), n_out: int = 10) -> nn.Sequential:
    "airbench94's network, freshly initialised: 32x32 -> stem 31x31 -> blocks 15, 7, 3 -> max-pool 1 -> linear"
    widths = (hp.stem,) + tuple(hp.widths)
    blocks = [(f'block{i + 1}', conv_block(a, b, hp)) for i, (a, b) in enumerate(pairwise(widths))]
    return nn.Sequential(OrderedDict([
        ('whiten', nn.Conv2d(3, hp.stem, 2, bias=True)), ('act', nn.GELU()), *blocks,  # stem: 2x2, no padding
        ('pool', nn.MaxPool2d(3)), ('flatten', nn.Flatten()), ('head', nn.Linear(widths[-1], n_out, bias=False)),
        ('scale', Scale(hp.out_scale))]))


def patch_covariance(x: torch.Tensor, size: int = 2, chunk: int = 500) -> torch.Tensor:
    "Covariance (float64) of all `size`x`size` patches of `x`, flattened in a conv weight's (channel, row, col) order"
    n, total, outer = 0, 0., 0.
    for part in x.split(chunk):
        p = F.unfold(part.double(), size).transpose(1, 2).reshape(-1, x.shape[1] * size * size)
        n, total, outer = n + len(p), total + p.sum(0), outer + p.T @ p
    mean = total / n
    return outer / n - torch.outer(mean, mean)


def whitening_weights(x: torch.Tensor, eps: float, size: int = 2) -> torch.Tensor:
    "Filters whose first half maps the patches of `x` to identity covariance (eigenvectors over root eigenvalues)"
    # the second half is the first negated, so that the GELU after the stem loses nothing (paper, Whitening)
    eigval, eigvec = torch.linalg.eigh(patch_covariance(x, size))
    w = (eigvec / (eigval + eps).sqrt()).T.reshape(-1, x.shape[1], size, size)
    return torch.cat([w, -w]).float()


def airbench_model(train_x: torch.Tensor, hp: Airbench94 = Airbench94()) -> nn.Sequential:
    "airbench94's network initialised for `train_x`: a frozen whitening stem, other convs partial identities"
    model = airbench_net(hp)
    with torch.no_grad():
        model.whiten.weight.copy_(whitening_weights(train_x[:hp.whiten_images], hp.whiten_eps))
        model.whiten.bias.zero_()  # our choice: the bias learns its shift from 0
        for conv in [m for m in model.modules() if isinstance(m, nn.Conv2d)][1:]:
            nn.init.dirac_(conv.weight[:conv.in_channels])  # "all convolutions after the first" (paper, Identity)
    model.whiten.weight.requires_grad_(False)
    return model.to(memory_format=torch.channels_last)


#############################################
#         Optimisation and schedules        #
#############################################

def triangle(step: int, total: int, warmup: float, start: float, end: float) -> float:
    "The rate's multiplier at `step` of `total`: linear from `start` to 1 over the first `warmup`, then to `end`"
    n_up = int(warmup * total)
    if step < n_up: return start + (1 - start) * step / n_up
    return 1 + (end - 1) * (step - n_up) / max(total - n_up, 1)


def airbench_optimizer(model: nn.Module, bs: int, hp: Airbench94 = Airbench94()) -> torch.optim.SGD:
    "Nesterov SGD on the summed loss, airbench94's decoupled rate and decay turned into torch's"
    gain = 1024 * (1 + 1 / (1 - hp.momentum))  # the decoupled form's unit: 1024 examples times momentum's gain
    lr, decay = hp.lr / gain, hp.wd * bs / gain  # per example; decay: what a step takes off, in rate units
    biases = [m.bias for m in model.modules() if isinstance(m, BatchNorm)]
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in set(map(id, biases))]
    groups = [dict(params=biases, lr=lr * hp.bias_lr), dict(params=others, lr=lr)]
    for group in groups: group['weight_decay'] = decay / group['lr']  # the same decay a step at any rate
    return torch.optim.SGD(groups, momentum=hp.momentum, nesterov=True)


class Lookahead:
    "Slow weights and BatchNorm statistics that the model's are blended into, then replaced by (Zhang et al. 2019)"
    def __init__(self, model: nn.Module):
        self.slow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float):
        "slow <- decay * slow + (1 - decay) * fast, then fast <- slow"
        for k, fast in model.state_dict().items():
            if k in self.slow: fast.copy_(self.slow[k].lerp_(fast, 1 - decay))


#############################################
#                 Training                  #
#############################################

def forward(model: nn.Module, x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    "`model`'s fp32 logits of `x` in channels_last, under CPU autocast to `dtype` unless it is None"
    with torch.autocast('cpu', dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        return model(x.contiguous(memory_format=torch.channels_last)).float()


def batch_size(name: str, bs: int, n: int) -> int:
    "`bs`, or all `n` images if they are fewer (a smoke check on a subset), which stderr says"
    if n >= bs: return bs
    print(f'{name}: {n} training images, fewer than its batch of {bs}: one batch of {n} an epoch', file=sys.stderr)
    return n


def shuffled_batches(n: int, bs: int, g: torch.Generator) -> list[torch.Tensor]:
    "A shuffled epoch of `n` images in whole batches of `bs`; the remainder sits the epoch out, as in both recipes"
    return list(torch.randperm(n, generator=g)[:n // bs * bs].split(bs))


class Run:
    "A recipe's model, optimizer and per-batch rules on `data`; subclasses add `batch`, `loss` and `tta`"
    name, tta_views = '', ''

    def __init__(self, data: Arrays, bs: int, epochs: float, g: torch.Generator):
        self.data, self.g, self.epochs = data, g, epochs
        self.bs = batch_size(self.name, bs, len(data.train_y))
        self.n_steps = math.ceil(len(data.train_y) // self.bs * epochs)

    def before_epoch(self, epoch: int): pass
    def after_step(self, step: int): self.sched.step()
    def after_fit(self): pass


class Airbench94Run(Run):
    "airbench94: summed label-smoothed loss, alternating flip, translation, lookahead, a stem bias frozen after 3"
    name, tta_views = 'airbench94', 'flip + 1-pixel translations'

    def __init__(self, data: Arrays, hp: Airbench94, g: torch.Generator):
        super().__init__(data, hp.bs, hp.epochs, g)
        self.hp, self.model = hp, airbench_model(data.train_x, hp)
        self.opt = airbench_optimizer(self.model, self.bs, hp)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, partial(
            triangle, total=self.n_steps, warmup=hp.warmup, start=hp.lr_start, end=hp.lr_end))
        self.lookahead, self.first_flips = Lookahead(self.model), torch.rand(len(data.train_y), generator=g) < 0.5

    def before_epoch(self, epoch: int):
        if epoch == self.hp.whiten_bias_epochs: self.model.whiten.bias.requires_grad_(False)
        self.flips = alternating_flips(self.first_flips, epoch)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = flip_where(self.data.train_x[idx], self.flips[idx])
        return translate(x, self.hp.translate, self.g), self.data.train_y[idx]

    def loss(self, out, y): return F.cross_entropy(out, y, label_smoothing=self.hp.label_smoothing, reduction='sum')

    def after_step(self, step: int):
        self.sched.step()
        if step % self.hp.lookahead_every == 0:
            self.lookahead.update(self.model, self.hp.lookahead_decay * (step / self.n_steps) ** 3)

    def after_fit(self): self.lookahead.update(self.model, 1.)  # the model keeps the slow weights
    def tta(self, x, dtype): return multicrop_tta(self.model, x, dtype)


class ResNet18Run(Run):
    "The ResNet18 recipe: mean loss, random flip, translation and cutout on every image, a linear triangle"
    name, tta_views = 'resnet18', 'flip'

    def __init__(self, data: Arrays, hp: ResNet18Recipe, g: torch.Generator):
        super().__init__(data, hp.bs, hp.epochs, g)
        self.hp, self.model = hp, resnet18(n_out=10).to(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=hp.lr, momentum=hp.momentum, nesterov=True,
                                   weight_decay=hp.wd)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, partial(
            triangle, total=self.n_steps, warmup=hp.warmup, start=0., end=0.))

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = flip_where(self.data.train_x[idx], torch.rand(len(idx), generator=self.g) < 0.5)
        return cutout(translate(x, self.hp.translate, self.g), self.hp.cutout, self.g), self.data.train_y[idx]

    def loss(self, out, y): return F.cross_entropy(out, y, label_smoothing=self.hp.label_smoothing)
    def tta(self, x, dtype): return flip_tta(self.model, x, dtype)


def train_epoch(run: Run, batches: list[torch.Tensor], step: int, dtype: torch.dtype | None) -> tuple[int, dict]:
    "Train `run` on `batches` from step `step`: the step reached, and the epoch's plain cross-entropy and accuracy"
    loss_sum, correct, seen = 0., 0, 0
    for idx in batches:
        x, y = run.batch(idx)
        out = forward(run.model, x, dtype)
        loss = run.loss(out, y)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        run.opt.step()
        step += 1
        run.after_step(step)
        loss_sum += F.cross_entropy(out.detach(), y, reduction='sum').item()  # the same measure for every recipe
        correct, seen = correct + (out.argmax(1) == y).sum().item(), seen + len(y)
    return step, dict(images=seen, loss=loss_sum / max(seen, 1), accuracy=correct / max(seen, 1))


def fit(run: Run, dtype: torch.dtype | None):
    "Train `run` for its steps, a progress line an epoch on stderr"
    step, n, n_epochs = 0, len(run.data.train_y), math.ceil(run.epochs)
    for epoch in range(n_epochs):
        start = time.perf_counter()
        run.model.train()
        run.before_epoch(epoch)
        step, seen = train_epoch(run, shuffled_batches(n, run.bs, run.g)[:run.n_steps - step], step, dtype)
        print(f"{run.name} epoch {epoch + 1}/{n_epochs}: {time.perf_counter() - start:.1f} s, {seen['images']} "
              f"images, training loss {seen['loss']:.4f}, accuracy {seen['accuracy']:.2%}", file=sys.stderr,
              flush=True)
    run.after_fit()


#############################################
#         Test-time augmentation            #
#############################################

@torch.no_grad()
def flip_tta(model: nn.Module, x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    "The mean logits of `x` and of its mirror image"
    return (forward(model, x, dtype) + forward(model, x.flip(-1), dtype)) / 2


@torch.no_grad()
def multicrop_tta(model: nn.Module, x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    "airbench's six views (paper, Multi-crop evaluation): `flip_tta` at 1/2, moved a pixel either way at 1/4 each"
    # moved along the diagonal, the edge filled by reflection: the image and its mirror 1/4 each, the others 1/8
    padded = F.pad(x, (1, 1, 1, 1), mode='reflect')
    moved = [padded[..., :-2, :-2], padded[..., 2:, 2:]]
    return flip_tta(model, x, dtype) / 2 + sum(flip_tta(model, m, dtype) for m in moved) / 4


@torch.no_grad()
def accuracies(run: Run, dtype: torch.dtype | None, bs: int = 500) -> tuple[float, float]:
    "Test accuracy of `run`'s model, plain and with its test-time augmentation"
    run.model.eval()
    plain = tta = 0
    for x, y in zip(run.data.test_x.split(bs), run.data.test_y.split(bs)):
        plain += (forward(run.model, x, dtype).argmax(1) == y).sum().item()
        tta += (run.tta(x, dtype).argmax(1) == y).sum().item()
    return plain / len(run.data.test_y), tta / len(run.data.test_y)


#############################################
#               Command line                #
#############################################

RECIPES = {'airbench94': (Airbench94Run, Airbench94()), 'resnet18': (ResNet18Run, ResNet18Recipe())}
DTYPES = {'fp32': None, 'bf16': torch.bfloat16}


def benchmark(name: str, data: Arrays, epochs: float, precision: str, seed: int) -> dict:
    "Train recipe `name` for `epochs` from `seed` and score it: its row of the results"
    make, hp = RECIPES[name]
    torch.manual_seed(seed)  # initial weights; `g` draws the batches and the augmentation
    start = time.perf_counter()
    run = make(data, replace(hp, epochs=epochs), torch.Generator().manual_seed(seed))
    fit(run, DTYPES[precision])
    minutes = (time.perf_counter() - start) / 60
    plain, tta = accuracies(run, DTYPES[precision])
    return dict(recipe=name, epochs=epochs, steps=run.n_steps, bs=run.bs, minutes=minutes, test_accuracy=plain,
                tta_accuracy=tta, tta_views=run.tta_views)


def table(rows: list[dict]) -> str:
    "The results as a markdown table"
    lines = ['| recipe | epochs | minutes of training | test accuracy | TTA test accuracy (views) |',
             '|---|---:|---:|---:|---|']
    lines += [f"| {r['recipe']} | {r['epochs']:g} | {r['minutes']:.2f} | {r['test_accuracy']:.2%} | "
              f"{r['tta_accuracy']:.2%} ({r['tta_views']}) |" for r in rows]
    return '\n'.join(lines)


def positive(kind):
    "An argparse type: a `kind` number above 0"
    def parse(text: str):
        value = kind(text)
        if value <= 0: raise argparse.ArgumentTypeError(f'{text!r}: give a number above 0')
        return value
    return parse


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--data', required=True, help="CIFAR-10 folder (batches or class folders), or 'sample'")
    p.add_argument('--n-train', type=int, help='the first n/10 training images of each class (default: all)')
    p.add_argument('--n-test', type=int, help='the first n/10 test images of each class (default: all)')
    p.add_argument('--recipes', nargs='+', choices=list(RECIPES), default=list(RECIPES))
    p.add_argument('--epochs-airbench94', type=positive(float), default=Airbench94.epochs)
    p.add_argument('--epochs-resnet18', type=positive(int), default=ResNet18Recipe.epochs)
    p.add_argument('--precision', choices=list(DTYPES), default='bf16', help='bf16: autocast on the CPU (default)')
    p.add_argument('--seed', type=int, default=0, help='initial weights, batch order and augmentation')
    p.add_argument('--out', type=Path, help='JSON file of the setting and the results')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:  # a missing or bad --data, or more images asked than it holds: one line (Cifar10Error is a ValueError)
        source = read_cifar10(args.data, progress=False)
        data = as_arrays(source, args.n_train, args.n_test)
    except (ValueError, OSError) as e: sys.exit(f'bench_peer: {e}')
    setting = dict(data=source.source, n_train=len(data.train_y), n_test=len(data.test_y), precision=args.precision,
                   seed=args.seed, date=datetime.now(UTC).isoformat(timespec='seconds'), **versions())
    print(f"{setting['data']}: {setting['n_train']} training / {setting['n_test']} test images; {args.precision}, "
          f"{setting['threads']} threads on {setting['processor']}, seed {args.seed}\n", flush=True)
    rows = [benchmark(name, data, getattr(args, f'epochs_{name}'), args.precision, args.seed) for name in args.recipes]
    print(table(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(args.out, 'w') as f: json.dump(dict(setting, results=rows), f, indent=2)


if __name__ == '__main__':
    main()
