"Read CIFAR-10 as uint8 arrays from the official batches, class folders of images, the bundled sample or a download"
import hashlib, os, stat, warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from fastai.data.external import URLs, fastai_path, untar_data
from fastprogress.fastprogress import progress_bar
from PIL import Image, UnidentifiedImageError

from cifar_fastai.batches import Cifar10Error, is_batches_dir, read_batches
from cifar_fastai.io import atomic_write

__all__ = ['CIFAR10_CLASSES', 'SAMPLE', 'CACHE_NAME', 'Cifar10', 'Cifar10Error', 'Source', 'resolve_source',
           'find_cifar10', 'read_cifar10', 'read_folders', 'read_npz', 'save_npz', 'cache_dir']

# label order of the official `batches.meta`, which is also the sorted order of the class folders
CIFAR10_CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']
SAMPLE = Path(__file__).parent/'sample'/'cifar10_sample.npz'  # 50 train + 20 test images per class
CACHE_NAME = '.cifar_fastai_cache.npz'
_CACHE_VERSION = '1'  # bump when the decoding changes, so old caches are rebuilt
_MAX_LISTED = 20
_LAYOUTS = ('either the official batches (cifar-10-batches-py/ holding data_batch_1..data_batch_5, test_batch and '
            'batches.meta, or those files themselves) or class folders of images (train/<class>/*.png and '
            'test/<class>/*.png, JPEG works too)')
_ARRAYS = ('train_x', 'train_y', 'test_x', 'test_y')
_EMPTY = {'train_x': np.zeros((0, 32, 32, 3), np.uint8), 'train_y': np.zeros(0, np.int64)}  # a split left unread


@dataclass(frozen=True, eq=False, repr=False)
class Cifar10:
    "CIFAR-10 images and labels as numpy arrays, with the class names and where they were read from"
    train_x: np.ndarray  # (N, 32, 32, 3) uint8, RGB, HWC
    train_y: np.ndarray  # (N,) int64 in 0..len(classes)-1
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]
    source: str  # e.g. 'class folders in /data/cifar10' or 'bundled sample ...'

    def __post_init__(self):
        for x, y, split in ((self.train_x, self.train_y, 'train'), (self.test_x, self.test_y, 'test')):
            if x.dtype != np.uint8 or x.shape[1:] != (32, 32, 3) or y.shape != x.shape[:1] or y.dtype != np.int64:
                raise Cifar10Error(f'{self.source}: {split} images are {x.dtype} {x.shape} with {y.dtype} labels '
                                   f'{y.shape}, expected uint8 (N, 32, 32, 3) with int64 labels (N,)')
            if len(y) and (y.min() < 0 or y.max() >= len(self.classes)):
                raise Cifar10Error(f'{self.source}: {split} labels span {y.min()}..{y.max()} but there are '
                                   f'{len(self.classes)} classes')

    def __repr__(self):
        return (f'Cifar10(train={len(self.train_x)}, test={len(self.test_x)}, classes={len(self.classes)}, '
                f'source={self.source!r})')


class Source(NamedTuple):
    "Where CIFAR-10 is read from: `kind` is 'batches', 'folders', 'sample' or 'download'"
    kind: str
    path: Path

    def __str__(self):
        if self.kind == 'batches': return f'official CIFAR-10 batches in {self.path}'
        if self.kind == 'folders': return f'class folders in {self.path}'
        if self.kind == 'sample': return 'bundled sample (50 train + 20 test images per class)'
        return f"fastai's URLs.CIFAR, downloaded to {self.path}"

    @property
    def data(self) -> str:
        "The `--data` value (`read_cifar10`'s `source`) that reads this source again, without searching"
        return {'sample': 'sample', 'download': 'cifar10'}.get(self.kind, str(self.path))

    @classmethod
    def from_str(cls, text: str) -> 'Source | None':
        "The source whose description (`str`) is `text`, as a run's `config.json` records it; None if none is"
        if text == str(cls('sample', SAMPLE)): return cls('sample', SAMPLE)
        for kind in ('batches', 'folders', 'download'):
            prefix = str(cls(kind, Path('.'))).removesuffix('.')  # these descriptions end with their path
            if text.startswith(prefix) and len(text) > len(prefix): return cls(kind, Path(text[len(prefix):]))
        return None


def _layout(path: Path) -> Source | None:
    "The CIFAR-10 layout in `path` (or in its `cifar-10-batches-py` subfolder), `None` if it has neither"
    path = Path(os.path.abspath(Path(path).expanduser()))
    if is_batches_dir(path): return Source('batches', path)
    if is_batches_dir(path/'cifar-10-batches-py'): return Source('batches', path/'cifar-10-batches-py')
    if (path/'train').is_dir() and (path/'test').is_dir(): return Source('folders', path)
    return None


def find_cifar10() -> Path | None:
    "The first CIFAR-10 copy in `$CIFAR10_DIR`, fastai's data folder, `./data/cifar10` or `./data`, else `None`"
    env = os.environ.get('CIFAR10_DIR')
    if env:
        if (found := _layout(env)) is None:
            raise Cifar10Error(f'CIFAR10_DIR={env} holds no CIFAR-10: expected {_LAYOUTS}; fix or unset CIFAR10_DIR')
        return found.path
    for path in (fastai_path('data')/'cifar10', Path('data')/'cifar10', Path('data')):
        if (found := _layout(path)) is not None: return found.path
    return None


def resolve_source(source: str | Path | None = None) -> Source:
    "Which data `read_cifar10(source)` reads: a folder, 'sample', 'cifar10' (download) or `None` (`find_cifar10`)"
    if source is None:
        found = find_cifar10()
        return Source('sample', SAMPLE) if found is None else _layout(found)
    if str(source) == 'sample': return Source('sample', SAMPLE)
    if str(source) == 'cifar10': return Source('download', fastai_path('data')/'cifar10')
    path = Path(source).expanduser()
    if not path.exists():
        raise Cifar10Error(f"{path} does not exist; pass a folder holding {_LAYOUTS}, or 'sample' for the bundled "
                           f"subset, or 'cifar10' to download it")
    if (found := _layout(path)) is None:
        raise Cifar10Error(f'{path} holds no CIFAR-10: expected {_LAYOUTS}')
    return found


def read_cifar10(source: str | Path | None = None, skip_bad: bool = False, cache: bool = True,
                 progress: bool = True, test_only: bool = False) -> Cifar10:
    "Read CIFAR-10 from `source`, a folder, 'sample', 'cifar10' or `None`; see `resolve_source`"
    # test_only: leave the training split empty, unread (evaluating a trained model needs only the test split)
    src = resolve_source(source)
    if src.kind == 'sample': return read_npz(src.path, source=str(src), test_only=test_only)
    if src.kind == 'batches': return Cifar10(*read_batches(src.path, test_only), source=str(src))
    root = _download() if src.kind == 'download' else src.path
    return read_folders(root, skip_bad=skip_bad, cache=cache, progress=progress, source=str(src), test_only=test_only)


def _download() -> Path:
    "Path of fastai's `URLs.CIFAR`, downloaded and extracted if needed"
    try: return untar_data(URLs.CIFAR)
    except Exception as e:
        reason = ' '.join(f'{type(e).__name__}: {e}'.split())
        raise Cifar10Error(
            f"Could not download CIFAR-10 from fastai's URLs.CIFAR ({URLs.CIFAR}): {reason}. Use a local copy "
            f"instead: pass `--data PATH` on the command line or call `read_cifar10(PATH)`, where PATH holds "
            f"{_LAYOUTS}; or set CIFAR10_DIR=PATH and leave the source unset; or use 'sample' for the bundled "
            f"500-image subset.") from e


def save_npz(data: Cifar10, path: Path, compressed: bool = True):
    "Save `data` to `path` as a pickle-free `.npz` that `read_npz` reads back"
    arrays = {k: getattr(data, k) for k in _ARRAYS}
    (np.savez_compressed if compressed else np.savez)(path, classes=np.array(data.classes, dtype=str), **arrays)


def read_npz(path: Path, source: str | None = None, test_only: bool = False) -> Cifar10:
    "Read a `Cifar10` saved by `save_npz` (the bundled sample is one)"
    with np.load(path, allow_pickle=False) as z:  # `z[k]` reads array k alone
        arrays = [_EMPTY[k] if test_only and k.startswith('train') else z[k] for k in _ARRAYS]
        return Cifar10(*arrays, classes=[str(c) for c in z['classes']], source=source or str(path))


def _class_files(folder: Path) -> dict[str, list[Path]]:
    "Files in each class subfolder of `folder`; classes and files sorted by name, hidden ones left out"
    def names(path, want_dir):  # sorting strings, not `Path`s, keeps listing 60,000 files fast
        return sorted(e.name for e in os.scandir(path) if not e.name.startswith('.') and
                      (e.is_dir() if want_dir else e.is_file()))
    return {c: [folder/c/name for name in names(folder/c, False)] for c in names(folder, True)}


def _list_images(root: Path) -> tuple[list[str], dict[str, list[Path]], dict[str, np.ndarray]]:
    "Classes, and the image paths and labels of each split of the class folders in `root`"
    if missing := [s for s in ('train', 'test') if not (root/s).is_dir()]:
        raise Cifar10Error(f'{root}: has no {" or ".join(missing)} folder; expected {_LAYOUTS}')
    splits = {s: _class_files(root/s) for s in ('train', 'test')}
    train, test = list(splits['train']), list(splits['test'])
    if train != test:
        raise Cifar10Error(f'{root}: train/ and test/ need the same class folders, but only train/ has '
                           f'{sorted(set(train) - set(test))} and only test/ has {sorted(set(test) - set(train))}')
    if not train: raise Cifar10Error(f'{root}: train/ and test/ hold no class folders; expected {_LAYOUTS}')
    empty = [str(root/s/c) for s, files in splits.items() for c in files if not files[c]]
    if empty: raise Cifar10Error(f'{root}: empty class folders {", ".join(empty)}; every class needs images in both')
    paths = {s: [p for c in train for p in files[c]] for s, files in splits.items()}
    labels = {s: np.repeat(np.arange(len(train)), [len(files[c]) for c in train]) for s, files in splits.items()}
    return train, paths, labels


class _WrongSize(ValueError): pass


def _decode(path: Path) -> np.ndarray:
    "RGB pixels (32, 32, 3) uint8 of the image at `path`; alpha is dropped, grayscale and palettes expanded"
    with Image.open(path) as im:
        if im.size != (32, 32): raise _WrongSize(f'is {im.size[0]}x{im.size[1]}, expected 32x32')
        return np.asarray(im.convert('RGB'))


def _is_bad_image(e: Exception) -> bool:
    "Whether `e` says that the bytes of an image cannot make a 32x32 image, rather than that they could not be read"
    # PIL's decoding errors are `OSError`s without an errno ('image file is truncated', `UnidentifiedImageError`);
    # the system's (permission, I/O, a vanished file) carry one and surface, as bugs do
    if isinstance(e, OSError): return e.errno is None
    return isinstance(e, (_WrongSize, SyntaxError, ValueError, EOFError, Image.DecompressionBombError))


def _reason(e: Exception) -> str:
    "Why an image file could not be used, for the list of bad files"
    if isinstance(e, _WrongSize): return str(e)
    if isinstance(e, UnidentifiedImageError): return 'not an image file that PIL can read'
    return f'undecodable image ({type(e).__name__}: {e})'


def _decode_splits(paths: dict, labels: dict, progress: bool) -> dict[str, np.ndarray]:
    "Pixels and labels of the good images of each split, and a 'path: reason' line per bad file"
    # one thread: 32x32 images decode in ~0.2 ms each and a thread pool measured no faster
    arrays, bad = {}, []
    for split in paths:
        x, ok = np.zeros((len(paths[split]), 32, 32, 3), np.uint8), np.ones(len(paths[split]), bool)
        for i, path in enumerate(progress_bar(paths[split], leave=False) if progress else paths[split]):
            try: x[i] = _decode(path)
            except Exception as e:
                if isinstance(e, OSError) and e.errno is not None:  # the system's, not the image's: name the file
                    raise type(e)(e.errno, f"{path} cannot be read ({e.strerror}): make it readable, or move it out "
                                           f"of its class folder") from e
                if not _is_bad_image(e): raise
                ok[i] = False
                bad.append(f'{path}: {_reason(e)}')
        arrays.update({f'{split}_x': x[ok], f'{split}_y': labels[split][ok]})
    return dict(arrays, bad=np.array(bad, dtype=str))


def _check_bad(root: Path, bad: list[str], skip_bad: bool):
    "Raise naming the first of the `bad` files in one line, or if `skip_bad` warn listing them"
    if not len(bad): return
    if not skip_bad:
        raise Cifar10Error(f'{root}: {len(bad)} files are not 32x32 images, the first {bad[0]}; fix or remove them, '
                           f'or pass --skip-bad (skip_bad=True) to leave them out, listed in a warning')
    more = f'\n  ... and {len(bad) - _MAX_LISTED} more' if len(bad) > _MAX_LISTED else ''
    warnings.warn(f'{root}: skipped {len(bad)} bad image files:\n  ' + '\n  '.join(bad[:_MAX_LISTED]) + more)


def read_folders(root: Path, skip_bad: bool = False, cache: bool = True, progress: bool = True,
                 source: str | None = None, test_only: bool = False) -> Cifar10:
    "Read the class folders `root/train/<class>/*` and `root/test/<class>/*`, through a cache of the decoded arrays"
    # test_only: the training split is left empty; without a cache only the test images are decoded (and not cached)
    root = Path(os.path.abspath(root))
    classes, paths, labels = _list_images(root)
    fingerprint = _fingerprint(root, paths['train'] + paths['test'])
    splits = ('test',) if test_only else ('train', 'test')
    arrays = _read_cache(root, fingerprint, splits) if cache else None
    if arrays is None:
        arrays = _decode_splits({s: paths[s] for s in splits}, labels, progress)
        if cache and not test_only: _write_cache(root, dict(arrays, classes=np.array(classes, dtype=str)), fingerprint)
    bad = [b for b in arrays['bad'].tolist() if not test_only or b.startswith(f'{root/"test"}{os.sep}')]
    _check_bad(root, bad, skip_bad)
    return Cifar10(*(arrays.get(k, _EMPTY.get(k)) for k in _ARRAYS), classes=classes,
                   source=source or f'class folders in {root}')


def cache_dir() -> Path:
    "Where caches of read-only data go: `$XDG_CACHE_HOME/cifar_fastai`, by default `~/.cache/cifar_fastai`"
    return Path(os.environ.get('XDG_CACHE_HOME') or '~/.cache').expanduser()/'cifar_fastai'


def _cache_paths(root: Path) -> list[Path]:
    "Cache files for `root`: beside the data, then in `cache_dir()`"
    return [root/CACHE_NAME, cache_dir()/f'cifar10-{hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]}.npz']


def _fingerprint(root: Path, paths: list[Path]) -> str:
    "Hash of the relative paths, sizes and modification times of `paths`"
    h = hashlib.sha256(f'cifar_fastai cache {_CACHE_VERSION}\n'.encode())
    n = len(str(root)) + 1
    for p in map(str, paths):
        st = os.stat(p)
        h.update(f'{p[n:]}\t{st.st_size}\t{st.st_mtime_ns}\n'.encode())
    return h.hexdigest()


def _read_cache(root: Path, fingerprint: str, splits=('train', 'test')) -> dict | None:
    "The arrays of `splits` cached for `root` if a cache matches `fingerprint`; a cache unread is reported, ignored"
    for path in filter(Path.is_file, _cache_paths(root)):
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z['fingerprint']) != fingerprint: continue
                arrays = {k: z[k] for k in _ARRAYS + ('bad',) if k == 'bad' or k.split('_')[0] in splits}
            for split in splits:  # a cache that loads but holds the wrong shapes is corrupt too
                x, y = arrays[f'{split}_x'], arrays[f'{split}_y']
                if x.dtype != np.uint8 or x.shape[1:] != (32, 32, 3) or y.shape != x.shape[:1]:
                    raise ValueError(f'{split} arrays have shapes {x.shape} and {y.shape}')
            return arrays
        except Exception as e:
            warnings.warn(f'{path}: ignoring the unreadable cache ({type(e).__name__}: {e}); rebuilding it')
    return None


def _writable(folder: Path) -> bool:
    # root may write anywhere, so also honour the owner write bit that marks shared data read-only
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & stat.S_IWUSR)


def _write_cache(root: Path, arrays: dict, fingerprint: str):
    "Save `arrays` atomically beside the data if that folder is writable, else in `cache_dir()`"
    beside, fallback = _cache_paths(root)
    for path in ([beside] if _writable(root) else []) + [fallback]:
        try: return _save_atomic(path, dict(arrays, fingerprint=np.array(fingerprint)))
        except OSError as e: error = e
    warnings.warn(f'{root}: could not write a cache of the decoded images ({error}); they will be decoded again '
                  f'next time: make {root} or {fallback.parent} writable, or set XDG_CACHE_HOME')


def _save_atomic(path: Path, arrays: dict):
    "Write `arrays` to `path` so that readers never see half a file"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f: np.savez(f, **arrays)  # uncompressed: CIFAR pixels shrink little, load 10x faster
