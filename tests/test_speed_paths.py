"Fast paths, same answers: every precision trains, channels_last computes the same, our loader matches the reference's"
import copy
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cifar_fastai.data import read_cifar10
from cifar_fastai.learner import cifar_learner
from cifar_fastai.loaders import cifar_dls
from cifar_fastai.models import BasicBlock, resnet18
from cifar_fastai.precision import Autocast, resolve_precision
from tests.helpers import load_script, synthetic_cifar


@pytest.fixture(scope='module')
def bench(): return load_script('bench_speed')


def _small_cnn():
    "A CIFAR-shaped classifier small enough for fp16 on CPU (no fast fp16 convolutions: minutes for a ResNet18)"
    return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), torch.nn.BatchNorm2d(16),
                               torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(16, 10))


def _cpu_bf16(monkeypatch, avx512_bf16: bool, amx: bool):
    "Make torch's capability queries say whether this CPU has AVX512-BF16 and AMX"
    monkeypatch.setattr(torch.cpu, '_is_avx512_bf16_supported', lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, '_is_amx_tile_supported', lambda: amx)


# an explicit precision is taken as asked whatever the CPU has; 'auto' is bf16 on a CPU that computes it natively
@pytest.mark.parametrize('precision,native_bf16,resolved,dtype', [
    ('fp32', True, 'fp32', None), ('bf16', False, 'bf16', torch.bfloat16), ('fp16', True, 'fp16', torch.float16),
    ('auto', True, 'bf16', torch.bfloat16), ('auto', False, 'fp32', None)])
def test_every_precision_trains_with_finite_losses(monkeypatch, precision, native_bf16, resolved, dtype):
    _cpu_bf16(monkeypatch, native_bf16, native_bf16)
    dls = cifar_dls(synthetic_cifar(n_train=32, n_test=16), bs=16, seed=0, device='cpu')
    learn = cifar_learner(dls, model=_small_cnn(), lr=0.01, precision=precision, channels_last=True)
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    assert learn.precision == resolved
    assert [cb.dtype for cb in learn.cbs if isinstance(cb, Autocast)] == ([dtype] if dtype else [])
    assert len(learn.recorder.losses) == 2 and all(math.isfinite(float(l)) for l in learn.recorder.losses)
    row = learn.epoch_record.rows[-1]
    assert all(math.isfinite(row[k]) for k in ('train_loss', 'test_loss'))
    assert learn.model[0].weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize('avx512_bf16,amx,precision', [(False, False, 'fp32'), (True, False, 'bf16'),
                                                       (False, True, 'bf16'), (True, True, 'bf16')])
def test_auto_on_a_cpu_takes_bf16_where_avx512_bf16_or_amx_computes_it(monkeypatch, avx512_bf16, amx, precision):
    _cpu_bf16(monkeypatch, avx512_bf16, amx)
    assert resolve_precision('auto', 'cpu') == precision


def _cpuinfo_flags() -> set:
    "The CPU's feature flags as Linux lists them in /proc/cpuinfo"
    cpuinfo = Path('/proc/cpuinfo')
    if not cpuinfo.is_file(): pytest.skip('no /proc/cpuinfo to read the CPU flags from')
    return {f for line in cpuinfo.read_text().splitlines() if line.startswith('flags') for f in line.split()[2:]}


def test_auto_on_this_cpu_is_bf16_exactly_where_its_flags_list_avx512_bf16_or_amx():
    native = bool(_cpuinfo_flags() & {'avx512_bf16', 'amx_bf16'})  # the kernel's view, independent of torch's
    assert resolve_precision('auto', 'cpu') == ('bf16' if native else 'fp32')


@pytest.mark.parametrize('capability,precision', [((7, 5), 'fp16'), ((7, 0), 'fp16'), ((8, 0), 'bf16'),
                                                  ((9, 0), 'bf16')])
def test_auto_on_a_gpu_takes_bf16_only_where_it_is_native(monkeypatch, capability, precision):
    # T4 (7.5) and V100 (7.0) emulate bf16, slower than their fp16; A100 (8.0) and H100 (9.0) compute it
    asked = []
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: asked.append(device) or capability)
    assert resolve_precision('auto', 'cuda:1') == precision
    assert asked == [torch.device('cuda:1')]  # the run's GPU, not whichever is current


def _stem():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1, bias=False), torch.nn.BatchNorm2d(64))


@pytest.mark.parametrize('make, n_in', [(_stem, 3), (lambda: BasicBlock(64, 128, stride=2), 64),
                                        (lambda: resnet18(n_out=10), 3)], ids=['stem', 'block', 'resnet18'])
def test_channels_last_computes_what_the_default_layout_does(make, n_in):
    torch.manual_seed(0)
    model = make()
    for m in model.modules():  # non-trivial batch-norm statistics, so eval mode is not an identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5); m.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.randn(4, n_in, 32, 32)
    fast = copy.deepcopy(model).to(memory_format=torch.channels_last)
    with torch.no_grad():
        expected, actual = model(x), fast(x.contiguous(memory_format=torch.channels_last))
    assert actual.shape == expected.shape and actual.abs().max() > 0.1
    torch.testing.assert_close(actual.contiguous(), expected, atol=1e-5, rtol=1e-5)


def _write_pngs(root: Path, n_per_class: int = 3, classes=('cat', 'dog', 'ship')) -> None:
    "Random 32x32 RGB images as PNG files in `root/{train,test}/<class>/`"
    rng = np.random.default_rng(0)
    for split in ('train', 'test'):
        for c in classes:
            (root/split/c).mkdir(parents=True)
            for i in range(n_per_class):
                rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                assert cv2.imwrite(str(root/split/c/f'{i:04d}.png'), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


@pytest.mark.parametrize('split', ['train', 'test'])
def test_loader_yields_the_reference_pixels_without_augmentation(bench, tmp_path, split):
    _write_pngs(tmp_path)
    files, labels, classes = bench.first_files(tmp_path, split, 3)
    ref = bench.ReferenceDataset(files, labels, aug=None)
    ref_x = torch.stack([ref[i][0] for i in range(len(ref))])
    dls = cifar_dls(read_cifar10(tmp_path, cache=False, progress=False), bs=4, augs=None, shuffle=False, device='cpu')
    dl = dls.train if split == 'train' else dls.valid
    batches = list(dl)
    ours_x = torch.cat([xb for xb, _ in batches]).as_subclass(torch.Tensor)
    ours_y = torch.cat([yb for _, yb in batches]).as_subclass(torch.Tensor)
    assert classes == list(dls.vocab) and ours_x.shape == (9, 3, 32, 32)
    assert ours_y.tolist() == labels
    torch.testing.assert_close(ours_x, ref_x, atol=1e-6, rtol=0)

