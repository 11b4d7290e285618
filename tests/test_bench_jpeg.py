"scripts/bench_jpeg.py: JPEG round trips, their PSNR, and a run of the bench on the bundled sample"
import argparse
import math

import cv2
import numpy as np
import pytest

from cifar_fastai.data import read_cifar10
from tests.helpers import load_script


@pytest.fixture(scope='module')
def bench(): return load_script('bench_jpeg')


@pytest.fixture(scope='module')
def images(): return read_cifar10('sample', progress=False).test_x[:40]


def test_psnr_of_a_hand_computed_case(bench):
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[0] += 1  # image 0: every pixel off by 1, MSE 1: 20 log10(255) = 48.13 dB; image 1 off by 255 in one of 48
    b[1, 0, 0, 0] = 255
    assert bench.psnr(a, b) == pytest.approx((20 * math.log10(255) + 10 * math.log10(48)) / 2)
    assert bench.psnr(a, a) == math.inf


def test_the_round_trip_decodes_what_opencvs_libjpeg_makes_of_the_same_quality(bench, images):
    for q in (90, 50):
        ours = bench.jpeg_round_trip(images, q)
        ref = np.stack([cv2.cvtColor(cv2.imdecode(cv2.imencode('.jpg', cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                                                               [cv2.IMWRITE_JPEG_QUALITY, q])[1], cv2.IMREAD_COLOR),
                                     cv2.COLOR_BGR2RGB) for img in images])
        assert ours.shape == images.shape and ours.dtype == np.uint8
        assert np.abs(ours.astype(int) - ref).mean() < 1  # two encoders, the same quantisation tables
    assert 25 < bench.psnr(images, bench.jpeg_round_trip(images, 30)) < bench.psnr(images, bench.jpeg_round_trip(
        images, 90)) < 60


def test_a_quality_is_read_or_1_to_95(bench):
    assert [bench.quality(t) for t in ('read', '1', '95')] == ['read', '1', '95']
    for bad in ('best', '0', '96', '-5', '7.5'):
        with pytest.raises(argparse.ArgumentTypeError, match="'read'"): bench.quality(bad)


def test_the_bench_trains_each_quality_from_the_same_start_and_compares_them(bench, capsys):
    bench.main(['--data', 'sample', '--n-train', '64', '--n-test', '32', '--epochs', '1', '--qualities', 'read', '40'])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith('| seed 0, ')]
    assert rows[0].startswith('| seed 0, as read | 1 | ') and len(rows) == 2
    assert rows[1].startswith('| seed 0, quality 40 again (')
    db = float(rows[1].split('(')[1].split(' dB')[0])
    assert 20 < db < 40
    assert out.strip().splitlines()[-1].startswith('quality 40 against read at epoch 1, points of accuracy: seed 0: ')


def test_the_fingerprint_finds_the_quality_the_images_were_encoded_at(bench, images):
    made = bench.jpeg_round_trip(images, 60)  # the sample's images, now JPEGs of quality 60
    found = bench.fingerprint(made, [50, 59, 60, 61, 70])
    assert max(found, key=lambda q: found[q][0]) == 60 and found[60][0] > 0.5
    assert min(found, key=lambda q: found[q][1]) == 60 and found[60][1] < found[59][1] / 2
