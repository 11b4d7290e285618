"""Does our fastai pipeline train as well as a plain PyTorch loop? The same recipe both ways, side by side (issue 14)

Each contender trains the CIFAR ResNet18 from the same initial weights on the same random subset of CIFAR-10, with
the same recipe: fastai's one-cycle (cosine, `--lr` peak after a quarter of the steps, momentum 0.95-0.85-0.95), L2
weight decay 5e-4 on the weights but not on BatchNorm, the default augmentation (flip, 16x16 cutout at p 0.5) with a
`--pad` crop, batch `--bs`. Contenders, given as PIPELINE:PRECISION with PRECISION fp32 or bf16:
  ours   `cifar_dls` + `cifar_learner` + `fit_one_cycle`, no weight average: what `cifar-fastai train` runs
  plain  a torch `Dataset` of the same arrays through the same Albumentations pipeline, a torch `DataLoader`,
         `torch.optim.SGD` and `OneCycleLR` set to fastai's one-cycle, bf16 under `torch.autocast`: no fastai at all
Training accuracy and loss are each epoch's means over its batches (augmented images, train mode), as fastai's are.
A pipeline that trains the network worse (data, augmentation, loader, callbacks) shows as a gap at the end.

    python scripts/bench_pipeline.py --data ../shared/data/cifar10 --n-train 5000 --n-test 2000 --epochs 10 \\
        --lr 0.025 --pad 4 --runs ours:bf16 plain:bf16 ours:fp32
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_precision import print_header, print_row, subset  # noqa: E402  (sibling scripts)
from bench_speed import reference_tfms  # noqa: E402

from cifar_fastai.data import Cifar10, read_cifar10  # noqa: E402
from cifar_fastai.learner import cifar_learner  # noqa: E402
from cifar_fastai.loaders import cifar_dls  # noqa: E402
from cifar_fastai.models import resnet18  # noqa: E402
from cifar_fastai.precision import DTYPES  # noqa: E402
from cifar_fastai.transforms import cifar_augs  # noqa: E402

MOMENTUM, WD = (0.95, 0.85), 5e-4  # fastai's one-cycle momentum range, and our weight decay


class ArrayDataset(Dataset):
    "(H, W, 3) uint8 images through an Albumentations pipeline, then normalised to float CHW as the reference does"
    def __init__(self, images: np.ndarray, labels: np.ndarray, aug=None):
        self.images, self.labels, self.tfms = images, labels, reference_tfms(aug)

    def __len__(self): return len(self.labels)
    def __getitem__(self, i): return self.tfms(image=self.images[i])['image'], int(self.labels[i])


def param_groups(model: torch.nn.Module) -> list[dict]:
    "Weight decay on conv and linear weights, none on BatchNorm and biases: fastai's `wd_bn_bias=False`"
    decay = [p for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for p in [m.weight]]
    ids = {id(p) for p in decay}
    return [dict(params=decay, weight_decay=WD), dict(params=[p for p in model.parameters() if id(p) not in ids],
                                                      weight_decay=0.)]


def one_cycle(opt: torch.optim.Optimizer, lr: float, steps: int) -> torch.optim.lr_scheduler.OneCycleLR:
    "torch's `OneCycleLR` set as fastai's `fit_one_cycle`: lr/25 up to lr over a quarter of `steps`, down to lr/1e5"
    # cosine both ways; the momentum from 0.95 down to 0.85 and back; torch divides the final rate by the first's 25
    return torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.25, div_factor=25.,
                                               final_div_factor=1e5 / 25, max_momentum=MOMENTUM[0],
                                               base_momentum=MOMENTUM[1])


def logits(model, x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    "`model`'s fp32 logits of `x` in channels_last, under bf16 autocast when `dtype` is set"
    with torch.autocast('cpu', dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        return model(x.contiguous(memory_format=torch.channels_last)).float()


def plain_epoch(model, loader, opt, sched, dtype) -> tuple[float, float]:
    "One training epoch of the plain loop: mean loss and accuracy over its batches"
    model.train()
    loss_sum, correct, n = 0., 0, 0
    for x, y in loader:
        out = logits(model, x, dtype)
        loss = F.cross_entropy(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_sum, correct, n = loss_sum + loss.item() * len(y), correct + (out.argmax(1) == y).sum().item(), n + len(y)
    return loss_sum / n, correct / n


@torch.no_grad()
def plain_test(model, loader, dtype) -> tuple[float, float]:
    "Mean loss and accuracy of `model` on `loader`, in eval mode"
    model.eval()
    loss_sum, correct, n = 0., 0, 0
    for x, y in loader:
        out = logits(model, x, dtype)
        loss_sum += F.cross_entropy(out, y, reduction='sum').item()
        correct, n = correct + (out.argmax(1) == y).sum().item(), n + len(y)
    return loss_sum / n, correct / n


def train_plain(data: Cifar10, init: dict, precision: str, args) -> list[dict]:
    "The plain PyTorch loop: per-epoch rows as `EpochRecord` writes them"
    torch.manual_seed(args.seed)
    dtype = DTYPES.get(precision)
    train = DataLoader(ArrayDataset(data.train_x, data.train_y, cifar_augs(pad=args.pad)), batch_size=args.bs,
                       shuffle=True, drop_last=True)
    test = DataLoader(ArrayDataset(data.test_x, data.test_y), batch_size=2 * args.bs)
    model = resnet18(n_out=10).to(memory_format=torch.channels_last)
    model.load_state_dict(init)
    opt = torch.optim.SGD(param_groups(model), lr=args.lr, momentum=MOMENTUM[0])
    sched = one_cycle(opt, args.lr, args.epochs * len(train))
    rows = []
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        train_loss, train_acc = plain_epoch(model, train, opt, sched, dtype)
        test_loss, test_acc = plain_test(model, test, dtype)
        rows.append(dict(epoch=epoch, train_loss=train_loss, train_accuracy=train_acc, test_loss=test_loss,
                         test_accuracy=test_acc, seconds=time.perf_counter() - start))
    return rows


def train_ours(data: Cifar10, init: dict, precision: str, args) -> list[dict]:
    "What `cifar-fastai train --schedule one-cycle --ema 0` runs, from `init`: its per-epoch rows"
    dls = cifar_dls(data, bs=args.bs, seed=args.seed, augs=cifar_augs(pad=args.pad), progress=False)
    model = resnet18(n_out=10)
    model.load_state_dict(init)
    learn = cifar_learner(dls, model=model, lr=args.lr, precision=precision)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(args.epochs, args.lr)
    return learn.epoch_record.rows


PIPELINES = dict(ours=train_ours, plain=train_plain)


def contender(text: str) -> tuple[str, str]:
    "'ours:bf16' -> ('ours', 'bf16'), refused by name if either part is unknown"
    pipeline, _, precision = text.partition(':')
    if pipeline not in PIPELINES or precision not in ('fp32', 'bf16'):
        raise argparse.ArgumentTypeError(f"{text!r}: give PIPELINE:PRECISION with PIPELINE one of "
                                         f"{', '.join(PIPELINES)} and PRECISION fp32 or bf16, e.g. plain:bf16")
    return pipeline, precision


def recipe_parser(description: str, n_test: int) -> argparse.ArgumentParser:
    "The options of a subset and of the recipe that `train_ours` reads, but its seed"
    p = argparse.ArgumentParser(description=description)
    p.add_argument('--data', required=True, help="CIFAR-10 folder (batches or class folders), or 'sample'")
    p.add_argument('--n-train', type=int, default=5000)
    p.add_argument('--n-test', type=int, default=n_test)
    p.add_argument('--epochs', type=int, default=10)
    p.add_argument('--lr', type=float, default=0.025, help="one-cycle peak (default 0.025: the 20-epoch run's, bs 64)")
    p.add_argument('--bs', type=int, default=64)
    p.add_argument('--pad', type=int, default=4, help='reflect-pad crop of the augmentation (default 4)')
    return p


def parse_args(argv=None):
    p = recipe_parser(__doc__.splitlines()[0], n_test=2000)
    p.add_argument('--seed', type=int, default=0, help='subset, initial weights, batch order and augmentation')
    p.add_argument('--runs', type=contender, nargs='+', default=[('ours', 'bf16'), ('plain', 'bf16')])
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    data = subset(read_cifar10(args.data, progress=False), args.n_train, args.n_test, args.seed)
    torch.manual_seed(args.seed)
    init = resnet18(n_out=10).state_dict()
    print(f"{data.source}; bs {args.bs}, one-cycle peak {args.lr}, pad {args.pad}, {args.epochs} epochs, seed "
          f"{args.seed}, {torch.get_num_threads()} threads\n")
    print_header('contender')
    finals = {}
    for pipeline, precision in args.runs:
        for r in PIPELINES[pipeline](data, init, precision, args): print_row(f'{pipeline} {precision}', r)
        finals[f'{pipeline} {precision}'] = r
    first, *rest = finals
    for name in rest:
        a, b = finals[name], finals[first]
        print(f"\n{name} against {first} at epoch {args.epochs}: train accuracy "
              f"{100 * (a['train_accuracy'] - b['train_accuracy']):+.2f} points, test accuracy "
              f"{100 * (a['test_accuracy'] - b['test_accuracy']):+.2f} points", end='')
    print()


if __name__ == '__main__':
    main()
