"Regenerate the bundled sample: the first `--n-train` train and `--n-test` test images of each class of `--src`"
import argparse
from pathlib import Path

import numpy as np

from cifar_fastai.data import SAMPLE, Cifar10, read_cifar10, save_npz


def first_per_class(x: np.ndarray, y: np.ndarray, n: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    "The first `n` items of each class of `y`, grouped by class, in their original order"
    counts = np.bincount(y, minlength=n_classes)
    if counts.min() < n: raise SystemExit(f'class {counts.argmin()} has {counts.min()} images, fewer than {n}')
    idx = np.concatenate([np.flatnonzero(y == c)[:n] for c in range(n_classes)])
    return x[idx], y[idx]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--src', type=Path, default=Path('../shared/data/cifar10'),
                        help='the full CIFAR-10, class folders (taken in sorted filename order) or official batches')
    parser.add_argument('--out', type=Path, default=SAMPLE, help='the .npz to write')
    parser.add_argument('--n-train', type=int, default=50, help='train images per class')
    parser.add_argument('--n-test', type=int, default=20, help='test images per class')
    args = parser.parse_args(argv)
    try: data = read_cifar10(args.src)
    except (ValueError, OSError) as e: parser.error(f'--src: {e}')  # Cifar10Error is a ValueError
    n_classes = len(data.classes)
    train = first_per_class(data.train_x, data.train_y, args.n_train, n_classes)
    test = first_per_class(data.test_x, data.test_y, args.n_test, n_classes)
    sample = Cifar10(*train, *test, classes=data.classes, source=f'sample of {data.source}')
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_npz(sample, args.out)
    print(f'{args.out}: {sample!r}, {args.out.stat().st_size / 1e6:.2f} MB')


if __name__ == '__main__': main()
