"scripts/lattice_phases.py: the share of a map on each 2x2 pixel phase, and where the layer1 gradient comes from"
import pytest
import torch

from cifar_fastai.models import resnet18
from tests.helpers import load_script


@pytest.fixture(scope='module')
def script(): return load_script('lattice_phases')


@pytest.fixture(scope='module')
def model_and_batch():
    "An untrained ResNet18 in eval mode (its statistics from two batches) and 4 images with their predicted classes"
    torch.manual_seed(0)
    model = resnet18()
    with torch.no_grad():
        for _ in range(2): model(torch.randn(8, 3, 32, 32))
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad(): classes = model(x).argmax(1)
    return model, x, classes


def test_phase_shares_of_hand_made_maps(script):
    lattice = torch.zeros(1, 4, 4)
    lattice[0, ::2, ::2] = 1  # a dot on every even row and column
    two = torch.zeros(1, 4, 4)
    two[0, 0, 0], two[0, 1, 3] = 1, 3  # (even, even) and (odd, odd)
    assert script.phase_shares(lattice) == pytest.approx([1, 0, 0, 0])
    assert script.phase_shares(torch.ones(2, 6, 6)) == pytest.approx([.25] * 4)
    assert script.phase_shares(two) == pytest.approx([.25, 0, 0, .75])


def test_the_stride_2_shortcut_sends_its_gradient_to_one_pixel_in_four(script, model_and_batch):
    rows = script.branch_rows(*model_and_batch)
    shortcut, = [v for k, v in rows.items() if '1x1 stride-2 shortcut' in k]
    convolution, = [v for k, v in rows.items() if '3x3 stride-2 convolution' in k]
    assert shortcut == pytest.approx([1, 0, 0, 0])  # a 1x1 kernel at stride 2 reads the even-even pixels only
    assert min(convolution) > 0.05  # overlapping 3x3 windows read every phase


def test_our_layercam_has_pytorch_grad_cams_lattice(script, model_and_batch):
    rows = script.stage_rows(*model_and_batch)
    assert rows['LayerCAM, ours'] == pytest.approx(rows['LayerCAM, pytorch-grad-cam'], abs=1e-3)
    assert sum(rows['activations']) == pytest.approx(1) and len(rows) == 5
