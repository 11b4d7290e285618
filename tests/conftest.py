"Shared fixtures: a short training run on the bundled sample, made once per test session"
import os
from pathlib import Path

import pytest

os.environ.setdefault('MPLBACKEND', 'Agg')  # no display needed for the pictures; before matplotlib is imported
import cifar_fastai  # noqa: E402,F401  first, as a user would: it keeps albumentations, which tests import, offline


@pytest.fixture(scope='session')
def sample_run(tmp_path_factory):
    "A 2-epoch run on the bundled sample, learning rate from a short range test: (learn, run folder)"
    from cifar_fastai.run import RunConfig, train
    parent, cwd = tmp_path_factory.mktemp('sample_run'), os.getcwd()
    os.chdir(parent)  # a relative run folder, as `--out runs/NAME` gives
    try: learn = train(RunConfig(data='sample', epochs=2, bs=64, lr='find', lr_find_iters=30, interpret=False),
                       Path('runs/sample'), log=lambda *a: None)
    finally: os.chdir(cwd)
    return learn, parent / 'runs' / 'sample'
