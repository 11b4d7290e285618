"Specifications of `cifar_fastai.data`: the official batches, class folders, the sample, the cache and the search"
import os, pickle, shutil, subprocess, warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifar_fastai import data
from cifar_fastai.data import CACHE_NAME, CIFAR10_CLASSES, SAMPLE, Cifar10Error, find_cifar10, read_cifar10

BATCHES = [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    "Keep every test away from the real home folder, fastai config and `CIFAR10_DIR`"
    monkeypatch.delenv('CIFAR10_DIR', raising=False)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path/'xdg'))
    monkeypatch.setattr(data, 'fastai_path', lambda folder: tmp_path/'fastai'/folder)


# ---- official batches -------------------------------------------------------------------------------------------

def dump(obj, path: Path, py2_names: bool = False):
    "Pickle `obj` with protocol 2 as the CIFAR site's files were; `py2_names` names numpy as Python 2 numpy did"
    raw = pickle.dumps(obj, protocol=2)
    path.write_bytes(raw.replace(b'numpy._core.', b'numpy.core.') if py2_names else raw)


def batch(x_hwc: np.ndarray, labels, name: str) -> dict:
    "A batch dict with bytes keys and CHW rows, like `cifar-10-batches-py/data_batch_1`"
    rows = x_hwc.transpose(0, 3, 1, 2).reshape(len(x_hwc), 3072)
    return {b'batch_label': name.encode(), b'labels': list(labels), b'data': rows,
            b'filenames': [f'img_{i}.png'.encode() for i in range(len(rows))]}


def write_batches(folder: Path, n: int = 4, py2_names: bool = False) -> tuple[np.ndarray, np.ndarray]:
    "Write 5 train batches, a test batch and `batches.meta` of `n` random images each; return all images and labels"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6 * n, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 6 * n)
    for i, name in enumerate(BATCHES):
        dump(batch(x[i*n:(i+1)*n], y[i*n:(i+1)*n].tolist(), name), folder/name, py2_names)
    meta = {b'num_cases_per_batch': n, b'label_names': [c.encode() for c in CIFAR10_CLASSES], b'num_vis': 3072}
    dump(meta, folder/'batches.meta', py2_names)
    return x, y


@pytest.mark.parametrize('py2_names', [False, True])
@pytest.mark.parametrize('given', ['folder', 'parent'])
def test_batches_read_back_exactly(tmp_path, given, py2_names):
    x, y = write_batches(tmp_path/'cifar-10-batches-py', py2_names=py2_names)
    d = read_cifar10(tmp_path/'cifar-10-batches-py' if given == 'folder' else tmp_path)
    np.testing.assert_array_equal(d.train_x, x[:20])
    np.testing.assert_array_equal(d.test_x, x[20:])
    np.testing.assert_array_equal(d.train_y, y[:20])
    assert d.train_x.shape == (20, 32, 32, 3) and d.train_y.dtype == np.int64 and d.classes == CIFAR10_CLASSES
    assert d.source == f'official CIFAR-10 batches in {tmp_path/"cifar-10-batches-py"}'


def test_batch_rows_are_red_then_green_then_blue_planes(tmp_path):
    write_batches(tmp_path)
    row = np.zeros((1, 3072), np.uint8)
    row[0, [1*32 + 2, 1024 + 1*32 + 2, 2048 + 1*32 + 2]] = 10, 20, 30  # pixel (row 1, column 2)
    dump({b'data': row, b'labels': [7]}, tmp_path/'test_batch')
    d = read_cifar10(tmp_path)
    assert d.test_x[0, 1, 2].tolist() == [10, 20, 30] and d.test_x.sum() == 60 and d.test_y.tolist() == [7]


class Payload:
    "Pickles as a call of `func(*args)`, the way a malicious pickle runs code"
    def __init__(self, func, *args): self.func, self.args = func, args
    def __reduce__(self): return self.func, self.args


@pytest.mark.parametrize('make', [lambda m: Payload(os.system, f'touch {m}'), lambda m: Payload(open, str(m), 'w'),
                                  lambda m: Payload(subprocess.call, ['touch', str(m)])],
                         ids=['os.system', 'open', 'subprocess.call'])
def test_malicious_batch_is_refused_before_running(tmp_path, make):
    write_batches(tmp_path)
    marker = tmp_path/'pwned'
    dump({b'data': np.zeros((1, 3072), np.uint8), b'labels': make(marker)}, tmp_path/'data_batch_2')
    with pytest.raises(Cifar10Error, match=r'data_batch_2: refused to load'):
        read_cifar10(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize('contents, match', [
    ({b'data': np.zeros((4, 3000), np.uint8), b'labels': [0] * 4}, r'uint8 array of shape \(4, 3000\).*\(N, 3072\)'),
    ({b'data': np.zeros((4, 3072), np.float32), b'labels': [0] * 4}, r'float32 array.*expected a uint8'),
    ({b'data': np.zeros((4, 3072), np.uint8), b'labels': [0, 1, 10, 2]}, r'labels span 0..10, expected 0..9'),
    ({b'data': np.zeros((4, 3072), np.uint8), b'labels': [0, -1, 2, 3]}, r'labels span -1..3, expected 0..9'),
    ({b'data': np.zeros((4, 3072), np.uint8), b'labels': [0, 1, 2]}, r'has 4 images but `labels` is not 4'),
    ({b'labels': [0]}, r'has no `data` entry'),
], ids=['shape', 'dtype', 'label-too-big', 'label-negative', 'label-count', 'no-data'])
def test_bad_batch_contents_name_the_file(tmp_path, contents, match):
    write_batches(tmp_path)
    dump(contents, tmp_path/'data_batch_3')
    with pytest.raises(Cifar10Error, match=rf'data_batch_3: .*{match}'): read_cifar10(tmp_path)


@pytest.mark.parametrize('keep', [0.5, 0.0])
def test_truncated_batch_names_the_file(tmp_path, keep):
    write_batches(tmp_path)
    raw = (tmp_path/'test_batch').read_bytes()
    (tmp_path/'test_batch').write_bytes(raw[:int(len(raw) * keep)])
    with pytest.raises(Cifar10Error, match=r'test_batch: not a readable CIFAR-10 batch.*truncated or corrupt'):
        read_cifar10(tmp_path)


def test_missing_batches_are_all_named(tmp_path):
    write_batches(tmp_path)
    (tmp_path/'data_batch_4').unlink()
    (tmp_path/'test_batch').unlink()
    with pytest.raises(Cifar10Error, match=r'missing data_batch_4, test_batch; .*data_batch_1..data_batch_5'):
        read_cifar10(tmp_path)


# ---- class folders ----------------------------------------------------------------------------------------------

def save(img: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def write_folders(root: Path, classes=('cat', 'dog'), n: int = 2, ext: str = 'png') -> np.ndarray:
    "Random 32x32 images in `root/{train,test}/<class>/`; return the train images in reading order"
    rng, train = np.random.default_rng(1), []
    for split in ('train', 'test'):
        for c in classes:
            for i in range(n):
                x = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                save(Image.fromarray(x), root/split/c/f'{i:04d}.{ext}')
                if split == 'train': train.append(x)
    return np.stack(train)


def test_png_folders_read_back_exactly(tmp_path):
    x = write_folders(tmp_path, classes=('dog', 'cat', 'bird'))
    d = read_cifar10(tmp_path, progress=False)
    np.testing.assert_array_equal(d.train_x, x[[4, 5, 2, 3, 0, 1]])  # classes sorted: bird, cat, dog
    assert d.classes == ['bird', 'cat', 'dog'] and d.train_y.tolist() == [0, 0, 1, 1, 2, 2]
    assert d.test_x.shape == (6, 32, 32, 3) and d.test_y.dtype == np.int64
    assert d.source == f'class folders in {tmp_path}'


def test_jpeg_folders_read_close_to_original(tmp_path):
    for split in ('train', 'test'):
        save(Image.new('RGB', (32, 32), (200, 100, 50)), tmp_path/split/'ship'/'0.jpg')
    d = read_cifar10(tmp_path, progress=False)
    assert np.abs(d.train_x[0].astype(int) - [200, 100, 50]).max() <= 3


def palette_image() -> Image.Image:
    img = Image.new('P', (32, 32), 1)
    img.putpalette([0, 0, 0, 12, 34, 56] + [0] * 762)
    return img


@pytest.mark.parametrize('img, rgb', [(Image.new('L', (32, 32), 77), [77, 77, 77]),
                                      (palette_image(), [12, 34, 56]),
                                      (Image.new('RGBA', (32, 32), (10, 20, 30, 128)), [10, 20, 30]),
                                      (Image.new('LA', (32, 32), (90, 0)), [90, 90, 90])],
                         ids=['grayscale', 'palette', 'rgba', 'gray-alpha'])
def test_other_modes_become_rgb(tmp_path, img, rgb):
    write_folders(tmp_path, classes=('cat',), n=1)
    save(img, tmp_path/'train'/'cat'/'9999.png')
    d = read_cifar10(tmp_path, progress=False)
    assert d.train_x[-1].reshape(-1, 3).tolist() == [rgb] * 1024


def truncated_png(path: Path):
    save(Image.fromarray(np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)), path)
    path.write_bytes(path.read_bytes()[:1500])


BAD_FILES = {'corrupt.png': (truncated_png, 'undecodable image'),
             'notes.txt': (lambda p: p.write_text('not a picture'), 'not an image file'),
             'big.png': (lambda p: save(Image.new('RGB', (64, 48)), p), 'is 64x48, expected 32x32')}


def test_bad_files_are_refused_in_one_line_and_each_is_named_with_its_problem_when_skipped(tmp_path):
    write_folders(tmp_path)
    for name, (make, _) in BAD_FILES.items(): make(tmp_path/'test'/'dog'/name)
    with pytest.raises(Cifar10Error) as err: read_cifar10(tmp_path, progress=False)
    message = str(err.value)
    assert '\n' not in message and '3 files are not 32x32 images, the first ' in message and '--skip-bad' in message
    assert sum(f'{tmp_path/"test"/"dog"/name}: {problem}' in message for name, (_, problem) in BAD_FILES.items()) == 1
    with pytest.warns(UserWarning) as warned: read_cifar10(tmp_path, skip_bad=True, progress=False)
    for name, (_, problem) in BAD_FILES.items():
        assert f'{tmp_path/"test"/"dog"/name}: {problem}' in str(warned[0].message)


def test_skip_bad_leaves_bad_files_out_and_warns(tmp_path):
    x = write_folders(tmp_path)
    for i in range(25): (tmp_path/'train'/'cat'/f'bad{i:02d}.txt').write_text('?')
    with pytest.raises(Cifar10Error, match=r'25 files'): read_cifar10(tmp_path, progress=False)
    with pytest.warns(UserWarning, match=r'(?s)skipped 25 bad image files.*\.\.\. and 5 more'):
        d = read_cifar10(tmp_path, skip_bad=True, progress=False)
    np.testing.assert_array_equal(d.train_x, x)
    assert d.train_y.tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize('error', [OSError(5, 'Input/output error'), PermissionError(13, 'Permission denied'),
                                   TypeError('a bug')], ids=['i/o error', 'permission', 'bug'])
def test_an_error_that_is_not_the_image_s_surfaces_and_marks_nothing_bad(tmp_path, monkeypatch, error):
    write_folders(tmp_path)
    failing, open_image = tmp_path/'train'/'cat'/'0001.png', Image.open
    def flaky(path, *args):
        if Path(path) == failing: raise error
        return open_image(path, *args)
    monkeypatch.setattr(data.Image, 'open', flaky)
    said = f'{failing} cannot be read .*: make it readable' if isinstance(error, OSError) else 'a bug'
    with pytest.raises(type(error), match=said): read_cifar10(tmp_path, progress=False)
    assert not (tmp_path/CACHE_NAME).exists()  # no verdict kept
    monkeypatch.setattr(data.Image, 'open', open_image)
    assert len(read_cifar10(tmp_path, progress=False).train_x) == 4  # once the disk reads it, the file is good


@pytest.mark.parametrize('change, match', [
    (lambda r: (r/'test'/'dog').rename(r/'test'/'bird'), r"only train/ has \['dog'\] and only test/ has \['bird'\]"),
    (lambda r: [p.unlink() for p in (r/'test'/'dog').iterdir()], r'empty class folders .*test/dog'),
    (lambda r: [p.unlink() for p in r.glob('*/*/*')] and [p.rmdir() for p in r.glob('*/*')], r'no class folders'),
], ids=['different-classes', 'empty-class', 'no-images'])
def test_folder_layout_errors(tmp_path, change, match):
    write_folders(tmp_path)
    change(tmp_path)
    with pytest.raises(Cifar10Error, match=match): read_cifar10(tmp_path, progress=False)


def test_read_folders_without_test_folder_is_an_error(tmp_path):
    write_folders(tmp_path)
    shutil.rmtree(tmp_path/'test')
    with pytest.raises(Cifar10Error, match=r'has no test folder; expected'): data.read_folders(tmp_path)


@pytest.mark.parametrize('where, match', [('missing', r'missing does not exist'),
                                          ('empty', r'empty holds no CIFAR-10')])
def test_path_without_cifar_lists_the_layouts(tmp_path, where, match):
    (tmp_path/'empty').mkdir()
    with pytest.raises(Cifar10Error, match=rf'{match}.*cifar-10-batches-py.*train/<class>'):
        read_cifar10(tmp_path/where)


# ---- bundled sample ---------------------------------------------------------------------------------------------

def test_sample_is_50_train_and_20_test_images_per_class():
    d = read_cifar10('sample')
    assert d.train_x.shape == (500, 32, 32, 3) and d.test_x.shape == (200, 32, 32, 3) and d.train_x.dtype == np.uint8
    assert d.classes == CIFAR10_CLASSES == ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse',
                                            'ship', 'truck']
    assert np.bincount(d.train_y).tolist() == [50] * 10 and np.bincount(d.test_y).tolist() == [20] * 10
    assert 100 < d.train_x.mean() < 140 and d.source.startswith('bundled sample')  # CIFAR-10's mean pixel is ~121


def test_sample_is_small_and_pickle_free():
    assert SAMPLE.stat().st_size < 2.5e6
    with np.load(SAMPLE, allow_pickle=False) as z:
        assert sorted(z.files) == ['classes', 'test_x', 'test_y', 'train_x', 'train_y']
        assert z['classes'].dtype.kind == 'U'


# ---- cache ------------------------------------------------------------------------------------------------------

def no_decoding(monkeypatch):
    def fail(*args): raise AssertionError('decoded the images instead of reading the cache')
    monkeypatch.setattr(data, '_decode_splits', fail)


def test_second_read_comes_from_the_cache(tmp_path, monkeypatch):
    x = write_folders(tmp_path)
    read_cifar10(tmp_path, progress=False)
    assert (tmp_path/CACHE_NAME).is_file()
    no_decoding(monkeypatch)
    np.testing.assert_array_equal(read_cifar10(tmp_path, progress=False).train_x, x)


def test_no_cache_is_written_when_disabled(tmp_path):
    write_folders(tmp_path)
    read_cifar10(tmp_path, cache=False, progress=False)
    assert not (tmp_path/CACHE_NAME).exists() and not (tmp_path/'xdg').exists()


def overwrite(root: Path):
    path = save(Image.new('RGB', (32, 32), (1, 2, 3)), root/'train'/'cat'/'0000.png')
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))


@pytest.mark.parametrize('change, n_train, first', [
    (overwrite, 4, [1, 2, 3]),
    (lambda r: save(Image.new('RGB', (32, 32), (1, 2, 3)), r/'train'/'cat'/'0000a.png'), 5, None),
    (lambda r: (r/'train'/'cat'/'0001.png').unlink(), 3, None)], ids=['modified', 'added', 'removed'])
def test_cache_is_rebuilt_when_files_change(tmp_path, change, n_train, first):
    write_folders(tmp_path)
    read_cifar10(tmp_path, progress=False)
    change(tmp_path)
    d = read_cifar10(tmp_path, progress=False)
    assert len(d.train_x) == n_train
    if first: assert d.train_x[0, 0, 0].tolist() == first


def wrong_shapes(path: Path):
    with np.load(path) as z: arrays = dict(z)
    np.savez(path, **dict(arrays, train_x=arrays['train_x'][..., 0]))


@pytest.mark.parametrize('spoil', [lambda p: p.write_bytes(b'not a zip file'),
                                   lambda p: p.write_bytes(p.read_bytes()[:1000]), wrong_shapes],
                         ids=['garbage', 'truncated', 'wrong-shapes'])
def test_corrupt_cache_is_rebuilt_with_a_warning(tmp_path, spoil):
    x = write_folders(tmp_path)
    read_cifar10(tmp_path, progress=False)
    spoil(tmp_path/CACHE_NAME)
    with pytest.warns(UserWarning, match=r'ignoring the unreadable cache'):
        np.testing.assert_array_equal(read_cifar10(tmp_path, progress=False).train_x, x)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        np.testing.assert_array_equal(read_cifar10(tmp_path, progress=False).train_x, x)


def fallback_caches(tmp_path: Path) -> list[Path]: return sorted((tmp_path/'xdg'/'cifar_fastai').glob('*.npz'))


def test_read_only_data_is_cached_in_the_cache_dir(tmp_path, monkeypatch):
    root = tmp_path/'ro'
    x = write_folders(root)
    root.chmod(0o555)  # root (the user) could still write here; the owner's write bit is what marks it read-only
    try:
        read_cifar10(root, progress=False)
        assert not (root/CACHE_NAME).exists() and len(fallback_caches(tmp_path)) == 1
        no_decoding(monkeypatch)
        np.testing.assert_array_equal(read_cifar10(root, progress=False).train_x, x)
    finally: root.chmod(0o755)


def test_unwritable_cache_beside_data_falls_back_without_leftovers(tmp_path):
    write_folders(tmp_path)
    (tmp_path/CACHE_NAME).mkdir()  # a folder in the way makes the write fail with an OSError
    read_cifar10(tmp_path, progress=False)
    assert len(fallback_caches(tmp_path)) == 1 and not list(tmp_path.glob('*.tmp'))


def test_unwritable_everywhere_only_warns(tmp_path, monkeypatch):
    x = write_folders(tmp_path/'data')
    (tmp_path/'data'/CACHE_NAME).mkdir()
    (tmp_path/'file').write_text('')
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path/'file'))  # the cache dir's parent is a file
    with pytest.warns(UserWarning, match=r'could not write a cache'):
        np.testing.assert_array_equal(read_cifar10(tmp_path/'data', progress=False).train_x, x)


# ---- finding the data -------------------------------------------------------------------------------------------

def test_cifar10_dir_is_found_and_read(tmp_path, monkeypatch):
    x, _ = write_batches(tmp_path/'mine'/'cifar-10-batches-py')
    monkeypatch.setenv('CIFAR10_DIR', str(tmp_path/'mine'))
    assert find_cifar10() == tmp_path/'mine'/'cifar-10-batches-py'
    d = read_cifar10()
    np.testing.assert_array_equal(d.test_x, x[20:])
    assert str(tmp_path/'mine') in d.source


def test_cifar10_dir_without_data_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv('CIFAR10_DIR', str(tmp_path))
    with pytest.raises(Cifar10Error, match=r'CIFAR10_DIR=.* holds no CIFAR-10.*fix or unset CIFAR10_DIR'):
        find_cifar10()


@pytest.mark.parametrize('where', ['fastai/data/cifar10', 'cwd/data/cifar10', 'cwd/data'])
def test_usual_places_are_searched(tmp_path, monkeypatch, where):
    (tmp_path/'cwd').mkdir()
    monkeypatch.chdir(tmp_path/'cwd')
    write_folders(tmp_path/where, n=1)
    assert find_cifar10() == tmp_path/where
    assert read_cifar10(progress=False).source == f'class folders in {tmp_path/where}'


def test_nothing_found_falls_back_to_the_sample(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_cifar10() is None
    d = read_cifar10()
    assert d.source.startswith('bundled sample') and len(d.train_x) == 500


# ---- download ---------------------------------------------------------------------------------------------------

def test_download_failure_says_how_to_use_a_local_copy(monkeypatch):
    def offline(url): raise ConnectionError('Name or service not known\n(no network)')
    monkeypatch.setattr(data, 'untar_data', offline)
    with pytest.raises(Cifar10Error) as err: read_cifar10('cifar10')
    message = str(err.value)
    assert '\n' not in message and 'ConnectionError: Name or service not known (no network)' in message
    for hint in ('--data PATH', 'read_cifar10(PATH)', 'cifar-10-batches-py', 'train/<class>', 'CIFAR10_DIR'):
        assert hint in message


def test_download_is_read_as_class_folders(tmp_path, monkeypatch):
    x = write_folders(tmp_path/'cifar10')
    monkeypatch.setattr(data, 'untar_data', lambda url: tmp_path/'cifar10')
    d = read_cifar10('cifar10', progress=False)
    np.testing.assert_array_equal(d.train_x, x)
    assert d.source.startswith("fastai's URLs.CIFAR")


# ---- the test split alone, and the source a run records --------------------------------------------------------

@pytest.mark.parametrize('cached', [False, True])
def test_test_only_reads_the_test_images_of_folders_and_decodes_no_training_image(tmp_path, monkeypatch, cached):
    write_folders(tmp_path)
    full = read_cifar10(tmp_path, progress=False, cache=cached)
    if cached: no_decoding(monkeypatch)  # the test arrays come from the cache
    else: (tmp_path/'train'/'cat'/'0000.png').write_bytes(b'undecodable')  # decoding the training split would fail
    d = read_cifar10(tmp_path, progress=False, cache=cached, test_only=True)
    np.testing.assert_array_equal(d.test_x, full.test_x)
    assert d.test_y.tolist() == full.test_y.tolist() and d.train_x.shape == (0, 32, 32, 3) and len(d.train_y) == 0


def test_test_only_reads_the_test_batch_alone(tmp_path):
    x, y = write_batches(tmp_path)
    (tmp_path/'data_batch_3').write_bytes(b'truncated')  # reading the training batches would fail
    d = read_cifar10(tmp_path, test_only=True)
    np.testing.assert_array_equal(d.test_x, x[20:])
    assert d.test_y.tolist() == y[20:].tolist()
    assert len(d.train_x) == 0 and len(read_cifar10('sample', test_only=True).test_x) == 200


@pytest.mark.parametrize('kind', ['batches', 'folders', 'sample', 'download'])
def test_a_recorded_source_reads_back_as_the_same_source(tmp_path, kind):
    source = data.Source(kind, SAMPLE if kind == 'sample' else tmp_path/'a folder'/'cifar 10')
    assert data.Source.from_str(str(source)) == source
    assert source.data == {'sample': 'sample', 'download': 'cifar10'}.get(kind, str(source.path))
    assert data.Source.from_str('synthetic') is None
