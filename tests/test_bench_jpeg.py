"scripts/bench_jpeg.py: JPEG round trips, and the quality a set of images was encoded at"
import argparse

import cv2
import numpy as np
import pytest

from cifar_fastai.data import read_cifar10
from tests.helpers import load_script


@pytest.fixture(scope='module')
def bench(): return load_script('bench_jpeg')


@pytest.fixture(scope='module')
def images(): return read_cifar10('sample', progress=False).test_x[:40]


def test_the_round_trip_decodes_what_opencvs_libjpeg_makes_of_the_same_quality(bench, images):
    for q in (90, 50):
        ours = bench.jpeg_round_trip(images, q)
        ref = np.stack([cv2.cvtColor(cv2.imdecode(cv2.imencode('.jpg', cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                                                               [cv2.IMWRITE_JPEG_QUALITY, q])[1], cv2.IMREAD_COLOR),
                                     cv2.COLOR_BGR2RGB) for img in images])
        assert ours.shape == images.shape and ours.dtype == np.uint8
        assert np.abs(ours.astype(int) - ref).mean() < 1  # two encoders, the same quantisation tables


def test_a_quality_is_1_to_95(bench):
    assert [bench.quality(t) for t in ('1', '95')] == [1, 95]
    for bad in ('read', '0', '96', '-5', '7.5'):
        with pytest.raises(argparse.ArgumentTypeError, match='1 to 95'): bench.quality(bad)


def test_main_prints_a_line_per_split_and_quality(bench, capsys):
    bench.main(['--data', 'sample', '--fingerprint', '60', '75', '--n', '20'])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(':')[0] for line in lines] == ['train, quality 60', 'train, quality 75', 'test, quality 60',
                                                      'test, quality 75']
    assert all('of 20 images unchanged' in line for line in lines)


def test_the_fingerprint_finds_the_quality_the_images_were_encoded_at(bench, images):
    made = bench.jpeg_round_trip(images, 60)  # the sample's images, now JPEGs of quality 60
    found = bench.fingerprint(made, [50, 59, 60, 61, 70])
    assert max(found, key=lambda q: found[q][0]) == 60 and found[60][0] > 0.5
    assert min(found, key=lambda q: found[q][1]) == 60 and found[60][1] < found[59][1] / 2


def test_missing_data_is_named_in_one_line(bench, tmp_path):
    with pytest.raises(SystemExit, match=f'^bench_jpeg: {tmp_path / "nowhere"} does not exist; pass a folder'):
        bench.main(['--data', str(tmp_path / 'nowhere'), '--fingerprint', '75'])
