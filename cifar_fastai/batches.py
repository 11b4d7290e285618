"Read the official pickled CIFAR-10 batches (`cifar-10-batches-py`) without running code from the files"
import pickle
from pathlib import Path

import numpy as np

try: from numpy._core import multiarray as _multiarray  # numpy >= 2
except ImportError: from numpy.core import multiarray as _multiarray  # numpy 1.x

__all__ = ['Cifar10Error', 'TRAIN_BATCHES', 'TEST_BATCH', 'META', 'is_batches_dir', 'load_pickle',
           'read_meta', 'read_batch', 'read_batches']

TRAIN_BATCHES = tuple(f'data_batch_{i}' for i in range(1, 6))
TEST_BATCH, META = 'test_batch', 'batches.meta'
_EXPECTED = 'data_batch_1..data_batch_5, test_batch and batches.meta'
_FIX = 'extract cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) again'


class Cifar10Error(ValueError):
    "CIFAR-10 data that cannot be read; the message names the file and what to do instead"


def _latin1(text: str, encoding: str = 'latin1') -> bytes:
    "`_codecs.encode` restricted to latin-1, the way protocol-2 pickles made by Python 3 store `bytes`"
    if encoding not in ('latin1', 'latin-1'): raise pickle.UnpicklingError(f'refused codec {encoding!r}')
    return text.encode('latin1')


# Everything a batch needs: the originals (Python 2 cPickle) name `numpy.core.multiarray`,
# numpy >= 2 writes `numpy._core.multiarray`; nothing here can run arbitrary code.
_ALLOWED = {(mod, name): getattr(_multiarray, name)
            for mod in ('numpy.core.multiarray', 'numpy._core.multiarray') for name in ('_reconstruct', 'scalar')}
_ALLOWED.update({('numpy', 'ndarray'): np.ndarray, ('numpy', 'dtype'): np.dtype, ('_codecs', 'encode'): _latin1})


class _BatchUnpickler(pickle.Unpickler):
    "Unpickler that only builds numpy arrays, lists, dicts, numbers and bytes"
    def __init__(self, file, path: Path):
        super().__init__(file, encoding='bytes')
        self.path = path

    def find_class(self, module, name):
        if (module, name) in _ALLOWED: return _ALLOWED[module, name]
        raise Cifar10Error(f'{self.path}: refused to load `{module}.{name}`: a CIFAR-10 batch holds only numpy '
                           f'arrays, lists and bytes, so this file is not an official batch; {_FIX}')


def is_batches_dir(path: Path) -> bool:
    "True if `path` holds any of the official batch files"
    return any((Path(path)/name).is_file() for name in (META, TEST_BATCH) + TRAIN_BATCHES)


def load_pickle(path: Path) -> dict:
    "Unpickle the dict in batch file `path` (keys decoded to `str`) without running code from it"
    path = Path(path)
    try:
        with open(path, 'rb') as f: obj = _BatchUnpickler(f, path).load()
    except Cifar10Error: raise
    except Exception as e:
        raise Cifar10Error(f'{path}: not a readable CIFAR-10 batch ({type(e).__name__}: {e}); the file is '
                           f'truncated or corrupt: {_FIX}') from e
    if not isinstance(obj, dict): raise Cifar10Error(f'{path}: holds a {type(obj).__name__}, expected a dict; {_FIX}')
    return {k.decode('latin1') if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _need(d: dict, key: str, path: Path):
    if key not in d: raise Cifar10Error(f'{path}: has no `{key}` entry (keys: {sorted(d)}); {_FIX}')
    return d[key]


def read_meta(path: Path) -> list[str]:
    "Class names, in label order, from `batches.meta` at `path`"
    names = _need(load_pickle(path), 'label_names', path)
    if not isinstance(names, list) or not names:
        raise Cifar10Error(f'{path}: `label_names` should be a non-empty list of class names; {_FIX}')
    return [n.decode('utf-8') if isinstance(n, bytes) else str(n) for n in names]


def read_batch(path: Path, n_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    "Images (N,32,32,3) uint8 and labels (N,) int64 from the batch file at `path`"
    d = load_pickle(path)
    data, labels = _need(d, 'data', path), _need(d, 'labels', path)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        desc = f'{data.dtype} array of shape {data.shape}' if isinstance(data, np.ndarray) else type(data).__name__
        raise Cifar10Error(f'{path}: `data` is a {desc}, expected a uint8 array of shape (N, 3072); {_FIX}')
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != len(data) or not np.issubdtype(y.dtype, np.integer):
        raise Cifar10Error(f'{path}: has {len(data)} images but `labels` is not {len(data)} integers; {_FIX}')
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise Cifar10Error(f'{path}: labels span {y.min()}..{y.max()}, expected 0..{n_classes - 1}; {_FIX}')
    # rows are CHW: 1024 red, then 1024 green, then 1024 blue values, each plane row-major
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y.astype(np.int64)


def read_batches(folder: Path, test_only: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list]:
    "`train_x, train_y, test_x, test_y, classes` from the official batches in `folder`"
    # test_only: the training batches are not read, and the training arrays are empty
    folder = Path(folder)
    missing = [n for n in (META,) + TRAIN_BATCHES + (TEST_BATCH,) if not (folder/n).is_file()]
    if missing:
        raise Cifar10Error(f'{folder}: missing {", ".join(missing)}; the official CIFAR-10 batches are '
                           f'{_EXPECTED}: {_FIX}')
    classes = read_meta(folder/META)
    empty = (np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.int64))
    train = [empty] if test_only else [read_batch(folder/n, len(classes)) for n in TRAIN_BATCHES]
    test_x, test_y = read_batch(folder/TEST_BATCH, len(classes))
    train_x, train_y = np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])
    return train_x, train_y, np.ascontiguousarray(test_x), test_y, classes
