"Specification of `cifar_fastai.gradcam`: maps of each method equal pytorch-grad-cam's, and the model is left as found"
import copy

import matplotlib
import numpy as np
import pytest
import torch
import pytorch_grad_cam
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from cifar_fastai.gradcam import CAMS, GradCAM, cam_class, denormalize, overlay
from cifar_fastai.models import resnet18

LAYERS = ['layer1', 'layer2', 'layer3', 'layer4']
REFERENCES = {'gradcam': pytorch_grad_cam.GradCAM, 'layercam': pytorch_grad_cam.LayerCAM,
              'gradcam++': pytorch_grad_cam.GradCAMPlusPlus}
TOL = 1e-5  # max abs difference allowed against pytorch-grad-cam (float32, numpy vs torch reductions)


@pytest.fixture(scope='module')
def pristine():
    torch.manual_seed(0)
    return resnet18(n_out=10)


@pytest.fixture
def model(pristine): return copy.deepcopy(pristine)


@pytest.fixture(scope='module')
def reference_model(pristine): return copy.deepcopy(pristine).eval()  # pytorch-grad-cam runs (and leaves) it in eval


@pytest.fixture(scope='module')
def multi_layer_maps(pristine):
    "Our maps of all four layers from one call, computed once per method, batch shape and targets"
    cache = {}
    def get(method, bs, h, w, targets):
        key = (method, bs, h, w, None if targets is None else tuple(targets))
        if key not in cache: cache[key] = all_maps(copy.deepcopy(pristine), batch(bs, h, w), targets, method=method)
        return cache[key]
    return get


def batch(bs=2, h=32, w=32, seed=1):
    return torch.randn(bs, 3, h, w, generator=torch.Generator().manual_seed(seed))


def all_maps(model, x, targets=None, layers=LAYERS, method='gradcam'):
    with CAMS[method](model, layers) as cam: return cam(x, targets)


def hooks_left(model):
    return [(name, kind) for name, m in model.named_modules()
            for kind in ('_forward_hooks', '_forward_pre_hooks', '_backward_hooks', '_backward_pre_hooks')
            if getattr(m, kind)]


def close(a, b): return (a - b).abs().max().item() <= TOL


@pytest.mark.parametrize('method', list(CAMS))
@pytest.mark.parametrize('layer', LAYERS)
@pytest.mark.parametrize('bs,h,w', [(2, 32, 32), (3, 64, 64), (1, 32, 48)])
@pytest.mark.parametrize('explicit_targets', [False, True])
def test_each_layer_matches_pytorch_grad_cam(multi_layer_maps, reference_model, method, layer, bs, h, w,
                                             explicit_targets):
    x = batch(bs, h, w)
    targets = [(3 * i + 7) % 10 for i in range(bs)] if explicit_targets else None
    ours = multi_layer_maps(method, bs, h, w, targets)[LAYERS.index(layer)]  # all four layers in one call
    ref_targets = None if targets is None else [ClassifierOutputTarget(t) for t in targets]
    with REFERENCES[method](reference_model, [reference_model.get_submodule(layer)]) as ref:
        expected = torch.from_numpy(ref(x, ref_targets))
    assert ours.shape == expected.shape == (bs, h, w)
    assert (ours - expected).abs().max().item() <= TOL


@pytest.mark.parametrize('method', list(CAMS))
@pytest.mark.parametrize('bs,h,w', [(1, 32, 32), (2, 48, 32), (3, 64, 64)])  # inputs with some positive evidence
def test_one_map_per_layer_in_order_each_scaled_to_unit_range(model, method, bs, h, w):
    maps = all_maps(model, batch(bs, h, w), layers=['layer4', 'layer2'], method=method)
    assert len(maps) == 2
    for m in maps:
        assert m.shape == (bs, h, w) and m.dtype == torch.float32
        assert torch.allclose(m.amin(dim=(1, 2)), torch.zeros(bs), atol=1e-6)
        assert torch.allclose(m.amax(dim=(1, 2)), torch.ones(bs), atol=1e-5)
    assert close(maps[0], all_maps(model, batch(bs, h, w), layers=['layer4'], method=method)[0])


def test_methods_differ_and_are_found_by_name(multi_layer_maps):
    maps = {m: multi_layer_maps(m, 2, 32, 32, None) for m in CAMS}
    for a, b in [('gradcam', 'layercam'), ('gradcam', 'gradcam++'), ('layercam', 'gradcam++')]:
        assert not torch.allclose(maps[a][0], maps[b][0], atol=1e-2), (a, b)
    assert cam_class('layercam') is CAMS['layercam'] and cam_class('gradcam') is GradCAM
    with pytest.raises(ValueError, match='gradcam, layercam, gradcam\\+\\+'): cam_class('scorecam')


@pytest.mark.parametrize('method', list(CAMS))
def test_map_without_positive_evidence_is_zero_not_nan(method):
    "Non-negative activations feeding only negative weights: ReLU leaves nothing, and the map stays 0"
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    torch.nn.init.constant_(net[4].weight, -1.)
    (m,) = all_maps(net, batch(2, 8, 8), layers=[net[1]], method=method)
    assert m.shape == (2, 8, 8) and torch.equal(m, torch.zeros(2, 8, 8))


def test_layer_names_and_modules_give_the_same_maps(model):
    x = batch()
    by_module = all_maps(model, x, layers=[model.layer1, model.layer3])
    by_name = all_maps(model, x, layers=['layer1', 'layer3'])
    assert all(torch.equal(a, b) for a, b in zip(by_module, by_name))


def test_each_image_is_explained_on_its_own(model):
    x = batch(3)
    together = all_maps(model, x)
    for i in range(3):
        alone = all_maps(model, x[i:i + 1])
        # batched convolutions round differently; normalising a faint map magnifies that, hence 1e-3
        assert all(torch.allclose(t[i:i + 1], a, atol=1e-3) for t, a in zip(together, alone))


def test_targets_none_explains_the_predicted_class(model):
    x = batch(3)
    with torch.no_grad(): predicted = model.eval()(x).argmax(1)
    maps = all_maps(model, x, layers=['layer3'])[0]
    assert torch.equal(maps, all_maps(model, x, predicted, layers=['layer3'])[0])
    assert not torch.allclose(maps, all_maps(model, x, (predicted + 1) % 10, layers=['layer3'])[0], atol=1e-2)


@pytest.mark.parametrize('targets,message', [([1, 2, 3], 'targets for a batch of 2'), ([0, 10], 'outside')])
def test_bad_targets_are_rejected(model, targets, message):
    with pytest.raises(ValueError, match=message): all_maps(model, batch(2), targets)
    assert hooks_left(model) == []


def test_unknown_layer_name_is_rejected(model):
    with pytest.raises(AttributeError, match='layer9'): GradCAM(model, ['layer9'])
    assert hooks_left(model) == []


@pytest.mark.parametrize('method', list(CAMS))
def test_hooks_live_exactly_as_long_as_the_block(model, method):
    with CAMS[method](model, LAYERS) as cam:
        assert len(hooks_left(model)) == 4
        cam(batch())
        assert cam.sizes == [(32, 32), (16, 16), (8, 8), (4, 4)]  # each layer's grid in that call
    assert hooks_left(model) == []
    cam = CAMS[method](model, LAYERS)
    cam.release()
    assert hooks_left(model) == []
    with pytest.raises(RuntimeError, match='released'): cam(batch())


def _raise_in_layer3(*args): raise IndexError('boom in layer3')


@pytest.mark.parametrize('method', list(CAMS))
@pytest.mark.parametrize('case', ['wrong_channels', 'layer_raises'])
def test_hooks_removed_and_error_propagates_when_forward_raises(model, monkeypatch, case, method):
    x = batch()
    if case == 'wrong_channels': x = x[:, :1]
    else: monkeypatch.setattr(model.layer3, 'forward', _raise_in_layer3)
    # IndexError included on purpose: pytorch-grad-cam's `__exit__` swallows it
    with pytest.raises((RuntimeError, IndexError)):
        with CAMS[method](model, LAYERS) as cam: cam(x)
    assert hooks_left(model) == []
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize('error', [IndexError, ValueError])
def test_exceptions_inside_the_block_are_not_swallowed(model, error):
    with pytest.raises(error):
        with GradCAM(model, LAYERS): raise error('raised by the caller')
    assert hooks_left(model) == []


@pytest.mark.parametrize('method', list(CAMS))
@pytest.mark.parametrize('training', [True, False])
def test_mode_restored_and_maps_computed_in_eval_mode(model, training, method):
    model.eval()
    expected = all_maps(model, batch(), method=method)
    model.train(training)
    model.layer2[0].bn1.eval()  # a mixed state must come back module by module
    stats = copy.deepcopy(model.layer1[0].bn1.state_dict())
    maps = all_maps(model, batch(), method=method)
    assert all(torch.equal(a, b) for a, b in zip(maps, expected))
    assert model.training == training and not model.layer2[0].bn1.training
    assert all(m.training == training for n, m in model.named_modules() if n != 'layer2.0.bn1')
    assert all(torch.equal(v, stats[k]) for k, v in model.layer1[0].bn1.state_dict().items())  # no BN update


@pytest.mark.parametrize('method', list(CAMS))
def test_parameter_grads_untouched(model, method):
    all_maps(model, batch(), method=method)
    assert all(p.grad is None for p in model.parameters())
    model.linear.weight.grad = torch.full_like(model.linear.weight, 0.5)
    all_maps(model, batch(), method=method)
    assert torch.equal(model.linear.weight.grad, torch.full_like(model.linear.weight, 0.5))


@pytest.mark.parametrize('context', ['no_grad', 'frozen', 'channels_last', 'bf16_autocast', 'input_requires_grad'])
def test_same_maps_whatever_the_calling_context(model, context):
    x = batch()
    expected = all_maps(model, x)
    if context == 'frozen': model.requires_grad_(False)
    if context == 'channels_last': model = model.to(memory_format=torch.channels_last)
    if context == 'input_requires_grad': x = x.clone().requires_grad_()
    if context == 'no_grad': ctx = torch.no_grad()
    elif context == 'bf16_autocast': ctx = torch.autocast('cpu', dtype=torch.bfloat16)
    else: ctx = torch.enable_grad()
    with ctx: maps = all_maps(model, x)
    assert all(m.dtype == torch.float32 and close(m, e) for m, e in zip(maps, expected))
    assert all(p.grad is None for p in model.parameters()) and x.grad is None


def test_denormalize_inverts_normalisation_and_clips():
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    images = torch.rand(2, 3, 4, 5)
    x = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    out = denormalize(x, mean, std)
    assert out.shape == (2, 4, 5, 3)
    assert torch.allclose(out, images.permute(0, 2, 3, 1), atol=1e-6)
    assert denormalize(torch.full((1, 3, 2, 2), 100.), mean, std).eq(1).all()


def _images():
    rgb = np.random.default_rng(0).random((6, 7, 3))
    return {'float': (rgb, rgb), 'uint8': ((rgb * 255).astype(np.uint8), (rgb * 255).astype(np.uint8) / 255),
            'tensor_chw': (torch.from_numpy(rgb).permute(2, 0, 1), rgb)}


@pytest.mark.parametrize('kind', ['float', 'uint8', 'tensor_chw'])
@pytest.mark.parametrize('alpha', [0.0, 0.3, 1.0])
def test_overlay_blends_image_and_colormap_by_alpha(kind, alpha):
    image, rgb = _images()[kind]
    heat = torch.linspace(0, 1, 42).view(6, 7)
    out = overlay(image, heat, alpha=alpha, cmap='viridis')
    assert out.shape == (6, 7, 3) and out.min() >= 0 and out.max() <= 1
    # viridis' first and last colours, from matplotlib's table (_cm_listed._viridis_data), at heat 0 and heat 1
    for pixel, colour in (((0, 0), (0.267004, 0.004874, 0.329415)), ((5, 6), (0.993248, 0.906157, 0.143936))):
        np.testing.assert_allclose(out[pixel], [(1 - alpha) * c + alpha * v for c, v in zip(rgb[pixel], colour)],
                                   atol=1e-6)
    if alpha == 0: np.testing.assert_allclose(out, rgb, atol=1e-6)
    if alpha == 1: np.testing.assert_allclose(out, matplotlib.colormaps['viridis'](heat.numpy())[..., :3], atol=1e-6)
    ends = [overlay(image, heat, alpha=a, cmap='viridis') for a in (0., 1.)]
    np.testing.assert_allclose(out, (1 - alpha) * ends[0] + alpha * ends[1], atol=1e-6)  # linear in alpha


@pytest.mark.parametrize('heatmap,alpha,message', [(np.zeros((5, 7)), 0.5, 'heatmap of shape'),
                                                   (np.zeros((6, 7)), 1.5, 'alpha')])
def test_overlay_rejects_bad_arguments(heatmap, alpha, message):
    with pytest.raises(ValueError, match=message): overlay(np.zeros((6, 7, 3)), heatmap, alpha=alpha)
