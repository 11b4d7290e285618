"Train and explain an image classifier on CIFAR-10 with fastai: data, augmentation, ResNet18, lr_find, GradCAM"
from cifar_fastai.startup import quiet_imports

with quiet_imports():  # before albumentations and fastai are first imported
    from cifar_fastai.callbacks import EpochRecord, NonFiniteLossError, ReduceLROnPlateau, StopOnNonFinite
    from cifar_fastai.data import Cifar10, Cifar10Error, find_cifar10, read_cifar10
    from cifar_fastai.errors import ConfigError
    from cifar_fastai.evaluate import Predictions, class_accuracy, format_accuracy, load_run, predict
    from cifar_fastai.faithfulness import faithfulness
    from cifar_fastai.gradcam import GradCAM, GradCAMPlusPlus, LayerCAM, denormalize, overlay
    from cifar_fastai.learner import cifar_learner
    from cifar_fastai.loaders import cifar_dls
    from cifar_fastai.models import resnet18
    from cifar_fastai.precision import Autocast, ChannelsLast
    from cifar_fastai.run import RunConfig, find_lr, train
    from cifar_fastai.transforms import CIFAR10_MEAN, CIFAR10_STD, AlbumentationsTransform, cifar_augs

__version__ = '0.1.0'
__all__ = ['Cifar10', 'Cifar10Error', 'ConfigError', 'read_cifar10', 'find_cifar10', 'cifar_dls', 'CIFAR10_MEAN',
           'CIFAR10_STD', 'AlbumentationsTransform', 'cifar_augs', 'resnet18', 'cifar_learner', 'ReduceLROnPlateau',
           'EpochRecord', 'StopOnNonFinite', 'NonFiniteLossError', 'Autocast', 'ChannelsLast', 'RunConfig', 'train',
           'find_lr', 'Predictions', 'predict', 'class_accuracy', 'format_accuracy', 'load_run', 'GradCAM', 'LayerCAM',
           'GradCAMPlusPlus', 'faithfulness', 'overlay', 'denormalize']
