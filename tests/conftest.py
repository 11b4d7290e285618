"Shared fixtures: a short training run on the bundled sample, made once per test session"
import os

import pytest

os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')  # albumentations otherwise checks for updates online
os.environ.setdefault('MPLBACKEND', 'Agg')


@pytest.fixture(scope='session')
def sample_run(tmp_path_factory):
    "A 2-epoch run on the bundled sample, learning rate from a short range test: (learn, run folder)"
    from cifar_fastai.run import RunConfig, train
    run = tmp_path_factory.mktemp('sample_run')
    learn = train(RunConfig(data='sample', epochs=2, bs=64, lr='find', lr_find_iters=30, interpret=False), run, log=lambda *a: None)
    return learn, run
