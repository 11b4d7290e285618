"""Does bf16 autocast cost accuracy per epoch? fp32 and bf16 trained side by side from the same start (issue 4)

Both contenders get the same initial weights, the same batches in the same order and the same augmentation draws,
on a random subset of CIFAR-10; each trains `--epochs` epochs at a fixed rate and reports per epoch its training
loss and accuracy, test loss and accuracy, and seconds. Run by hand; results go to BENCHMARKS.md.

    python scripts/bench_precision.py --data ../shared/data/cifar10 --n-train 10000 --n-test 2000 --epochs 1
"""
import argparse

import numpy as np
import torch

from cifar_fastai.data import Cifar10, read_cifar10
from cifar_fastai.learner import cifar_learner
from cifar_fastai.loaders import cifar_dls


def subset(data: Cifar10, n_train: int, n_test: int, seed: int = 0) -> Cifar10:
    "`n_train` training and `n_test` test images of `data`, drawn at random"
    rng = np.random.default_rng(seed)
    tr, te = rng.permutation(len(data.train_y))[:n_train], rng.permutation(len(data.test_y))[:n_test]
    return Cifar10(data.train_x[tr], data.train_y[tr], data.test_x[te], data.test_y[te], data.classes,
                   f"{n_train} train / {n_test} test images of {data.source}")


def train_one(data: Cifar10, precision: str, epochs: int, lr: float, bs: int, seed: int) -> list:
    "The per-epoch rows of one contender, from the weights and batches that `seed` fixes"
    dls = cifar_dls(data, bs=bs, seed=seed)
    torch.manual_seed(seed)
    learn = cifar_learner(dls, lr=lr, precision=precision)
    with learn.no_bar(), learn.no_logging(): learn.fit(epochs, lr)
    return learn.epoch_record.rows


def print_header(first: str):
    "The markdown table's head: `first` names the contenders' column"
    print(f'| {first} | epoch | train loss | train accuracy | test loss | test accuracy | seconds |')
    print('|---|---:|---:|---:|---:|---:|---:|')


def print_row(name: str, r: dict):
    "One epoch's row (as `EpochRecord` keeps it) of contender `name`, printed at once"
    print(f"| {name} | {r['epoch']} | {r['train_loss']:.4f} | {r['train_accuracy']:.2%} | {r['test_loss']:.4f} | "
          f"{r['test_accuracy']:.2%} | {r['seconds']:.0f} |", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--data', required=True, help='CIFAR-10 folder (batches or class folders)')
    p.add_argument('--n-train', type=int, default=10000)
    p.add_argument('--n-test', type=int, default=2000)
    p.add_argument('--epochs', type=int, default=1)
    p.add_argument('--lr', type=float, default=0.00275,
                   help="fixed rate (default: lr_find's minimum rule on full data, bs 64)")
    p.add_argument('--bs', type=int, default=64)
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args()
    data = subset(read_cifar10(args.data), args.n_train, args.n_test, args.seed)
    print(f"{data.source}; bs {args.bs}, lr {args.lr}, {args.epochs} epochs, {torch.get_num_threads()} threads\n")
    print_header('precision')
    for precision in ('fp32', 'bf16'):
        for r in train_one(data, precision, args.epochs, args.lr, args.bs, args.seed): print_row(precision, r)


if __name__ == '__main__':
    main()
