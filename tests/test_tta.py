"Flip test-time augmentation: the mean of the probabilities of each image and of its mirror image"
import torch

from cifar_fastai.evaluate import predict
from cifar_fastai.learner import cifar_learner
from cifar_fastai.loaders import cifar_dls
from tests.helpers import synthetic_cifar


def test_tta_is_the_mean_of_plain_and_mirrored_probabilities():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))  # sees left and right apart
    dls = cifar_dls(synthetic_cifar(32, 24), bs=8, seed=0)
    learn = cifar_learner(dls, model=model, precision='fp32', channels_last=False)
    xs = torch.cat([x for x, _ in dls.valid])  # the normalised test images, in order
    with torch.no_grad(): plain, mirrored = (torch.softmax(model(x), dim=1) for x in (xs, xs.flip(3)))
    assert not torch.allclose(plain, mirrored, atol=1e-3)  # the mirror changes the prediction
    torch.testing.assert_close(predict(learn).probs, plain, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(predict(learn, tta=True).probs, (plain + mirrored) / 2, atol=1e-6, rtol=1e-5)
