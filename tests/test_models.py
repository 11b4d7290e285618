"The CIFAR ResNet18: its size, its stages and the inputs it takes"
import pytest
import torch

from cifar_fastai.models import resnet18


def test_resnet18_has_the_reference_parameter_count():
    assert sum(p.numel() for p in resnet18().parameters()) == 11_173_962  # as both reference reports print


@pytest.mark.parametrize('n_out', [10, 100])
def test_head_size_follows_n_out(n_out):
    assert resnet18(n_out).linear.out_features == n_out


@pytest.mark.parametrize('size', [32, 48, 64])
def test_any_size_the_stages_can_halve(size):
    model = resnet18().eval()
    with torch.no_grad(): assert model(torch.randn(2, 3, size, size)).shape == (2, 10)


def test_stages_halve_the_resolution_from_a_stride_1_stem():
    model, shapes = resnet18().eval(), {}
    hooks = [getattr(model, n).register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape)))
             for n in ('layer1', 'layer2', 'layer3', 'layer4')]
    with torch.no_grad(): model(torch.randn(1, 3, 32, 32))
    for h in hooks: h.remove()
    assert shapes == {'layer1': (1, 64, 32, 32), 'layer2': (1, 128, 16, 16),
                      'layer3': (1, 256, 8, 8), 'layer4': (1, 512, 4, 4)}
