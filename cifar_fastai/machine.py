"What machine and libraries a run or a benchmark ran on"
import os
import platform

__all__ = ['cpu_name', 'versions']


def cpu_name() -> str:
    "The CPU's model name, as /proc/cpuinfo gives it (`platform.processor()` is empty on Linux), else what we know"
    try: names = [l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')]
    except OSError: names = []
    return names[0] if names else (platform.processor() or platform.machine())


def versions() -> dict:
    "Python, torch, fastai and Albumentations versions, the machine, its CPU, its cores and torch's threads"
    import albumentations
    import fastai
    import torch
    return {'python': platform.python_version(), 'torch': torch.__version__, 'fastai': fastai.__version__,
            'albumentations': albumentations.__version__, 'machine': platform.machine(),
            'processor': cpu_name(), 'cores': os.cpu_count(), 'threads': torch.get_num_threads()}
