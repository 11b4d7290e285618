"""At which JPEG quality was the data encoded? The quality whose round trip leaves the most images unchanged

A JPEG decoded and encoded again at the quality and tables it was made at comes back nearly unchanged; at any other
quality its pixels move. For each quality asked, on 3,000 random images of each split, this prints the share of images
that a Pillow round trip (its default 4:2:0 chroma subsampling) leaves unchanged and how far a pixel moves on average.

    python scripts/bench_jpeg.py --data ../shared/data/cifar10 --fingerprint 70 74 75 76 80
"""
import argparse
import io
import sys

import numpy as np
from PIL import Image

from cifar_fastai.data import Cifar10, read_cifar10


def jpeg_round_trip(images: np.ndarray, quality: int) -> np.ndarray:
    "(N, H, W, 3) uint8 images encoded as JPEG at `quality` by Pillow and decoded again"
    out = np.empty_like(images)
    for i, img in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, 'JPEG', quality=quality)
        with Image.open(buf) as im: out[i] = np.asarray(im.convert('RGB'))
    return out


def fingerprint(images: np.ndarray, qualities: list[int]) -> dict[int, tuple[float, float]]:
    "For each quality, the share of `images` a round trip leaves unchanged and the mean absolute change of a pixel"
    out = {}
    for q in qualities:
        diff = np.abs(jpeg_round_trip(images, q).astype(np.int16) - images)
        out[q] = float((diff.reshape(len(images), -1).max(1) == 0).mean()), float(diff.mean())
    return out


def quality(text: str) -> int:
    "A JPEG quality 1..95, refused by name otherwise"
    if text.isdigit() and 1 <= int(text) <= 95: return int(text)
    raise argparse.ArgumentTypeError(f"{text!r}: give a JPEG quality from 1 to 95")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--data', default='sample', help="a CIFAR-10 folder, or 'sample'")
    p.add_argument('--fingerprint', type=quality, nargs='+', metavar='Q', required=True,
                   help='the qualities whose round trips to try')
    p.add_argument('--n', type=int, default=3000, help='random images of each split')
    return p.parse_args(argv)


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
    try: data = read_cifar10(args.data, progress=False)
    except (ValueError, OSError) as e: sys.exit(f'bench_jpeg: {e}')  # Cifar10Error is a ValueError
    print_fingerprint(data, args.fingerprint, args.n)


if __name__ == '__main__':
    main()
