"""Where the dotted lattice of the layer1 maps comes from: each map's mass on the four pixel phases of a 2x2 grid.

A lattice that one pixel in four carries shows up as one phase holding far more than a quarter of the mass. The
script prints, for the layer1 output of a trained run on every `--every`th test image: the activations, their
gradient for the predicted class, LayerCAM (ours and pytorch-grad-cam's) and LayerCAM at layer2, and the gradient that
reaches layer1 through each of the two branches of layer2's first block (its 3x3 stride-2 convolution and its 1x1
stride-2 shortcut). Run by hand; results go to docs/results/explanations/README.md.

    python scripts/lattice_phases.py runs/final-oc20-s0 --data ../shared/data/cifar10
"""
import argparse

import torch
from pytorch_grad_cam import LayerCAM as ReferenceLayerCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from cifar_fastai.data import read_cifar10
from cifar_fastai.gradcam import LayerCAM
from cifar_fastai.config import read_config
from cifar_fastai.models import resnet18
from cifar_fastai.run import WEIGHTS
from cifar_fastai.transforms import CIFAR10_MEAN, CIFAR10_STD

PHASES = ('even row, even column', 'even, odd', 'odd, even', 'odd, odd')


def phase_shares(maps: torch.Tensor) -> list[float]:
    "Mean share of each (B,H,W) map's mass on the pixels of each 2x2 phase, in the order of `PHASES`"
    maps = maps.abs() / (maps.abs().sum(dim=(1, 2), keepdim=True) + 1e-12)
    return [maps[:, i::2, j::2].sum(dim=(1, 2)).mean().item() for i in (0, 1) for j in (0, 1)]


def test_batch(data, every: int) -> torch.Tensor:
    "Every `every`th test image of `data`, normalised as the runs train on them"
    test = read_cifar10(data, progress=False, test_only=True)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (CIFAR10_MEAN, CIFAR10_STD))
    return (torch.from_numpy(test.test_x[::every]).permute(0, 3, 1, 2).float() / 255 - mean) / std


def stage_rows(model, x: torch.Tensor, classes: torch.Tensor) -> dict:
    "The phase shares of layer1's activations, their gradient and its LayerCAM maps; of layer2's LayerCAM map"
    found = {}
    def keep(name):
        def hook(module, args, out):
            found[name] = out
            out.register_hook(lambda g: found.__setitem__(f'{name} grad', g))
        return hook
    hooks = [model.get_submodule(n).register_forward_hook(keep(n)) for n in ('layer1', 'layer2')]
    model(x).gather(1, classes[:, None]).sum().backward()
    for h in hooks: h.remove()
    layer2 = (found['layer2 grad'].clamp_min(0) * found['layer2'].detach()).sum(1).clamp_min(0)  # LayerCAM at 16x16
    with LayerCAM(model, ['layer1']) as cam: ours = cam(x, classes)[0]
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    with ReferenceLayerCAM(model=model, target_layers=[model.layer1]) as cam:
        reference = torch.from_numpy(cam(input_tensor=x, targets=targets))
    return {'activations': phase_shares(found['layer1'].detach().clamp_min(0).sum(1)),
            'gradient': phase_shares(found['layer1 grad'].sum(1)),
            'LayerCAM, ours': phase_shares(ours), 'LayerCAM, pytorch-grad-cam': phase_shares(reference),
            'layer2 (16x16): LayerCAM, from its activations and gradient': phase_shares(layer2)}


def branch_rows(model, x: torch.Tensor, classes: torch.Tensor) -> dict:
    "The phase shares of the gradient reaching layer1 through each branch of layer2's first block, and its total"
    leaves = {}
    def split(name):
        def pre(module, args):
            leaves[name] = args[0].detach().requires_grad_()
            return (leaves[name],)
        return pre
    block = model.layer2[0]
    hooks = [block.conv1.register_forward_pre_hook(split('3x3 stride-2 convolution')),
             block.shortcut.register_forward_pre_hook(split('1x1 stride-2 shortcut'))]
    model(x).gather(1, classes[:, None]).sum().backward()
    for h in hooks: h.remove()
    total = sum(v.grad.abs().sum() for v in leaves.values())
    return {f'gradient through the {k} ({v.grad.abs().sum() / total:.0%} of it)': phase_shares(v.grad.sum(1))
            for k, v in leaves.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('run', help='a run folder with model.pth')
    p.add_argument('--data', help="the test images (default: the run's data source)")
    p.add_argument('--every', type=int, default=100, help='take every Nth test image (default 100: 100 images)')
    a = p.parse_args()
    torch.set_num_threads(1)
    config = read_config(a.run)
    model = resnet18(len(config['classes']))
    model.load_state_dict(torch.load(f'{a.run}/{WEIGHTS}', map_location='cpu', weights_only=True))
    model.eval()
    x = test_batch(a.data or config['data'], a.every)
    with torch.no_grad(): classes = model(x).argmax(1)
    rows = {**stage_rows(model, x, classes), **branch_rows(model, x, classes)}
    print(f'{len(x)} test images, predicted classes; share of each map on the pixels of each 2x2 phase')
    print('| layer1 | ' + ' | '.join(PHASES) + ' |\n|---|' + '---|' * len(PHASES))
    for name, shares in rows.items(): print(f'| {name} | ' + ' | '.join(f'{s:.3f}' for s in shares) + ' |')


if __name__ == '__main__': main()
