"Files that are either whole or absent: atomic writes, and a clear error for a folder that cannot be written"
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

__all__ = ['atomic_write', 'atomic_save', 'ensure_writable_dir']


@contextmanager
def atomic_write(path, mode: str = 'wb', **kwargs):
    "Open a temporary file beside `path`; on success flush, fsync and rename it over `path`, else remove it"
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # `mkstemp` makes 0600 files; give the mode `open` would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_save(obj, path):
    "`torch.save` `obj` to `path` so that a crash or a full disk leaves the previous file intact"
    try:
        with atomic_write(path) as f: torch.save(obj, f)
    except OSError as e:
        raise OSError(e.errno, f"Could not write {path}: {e.strerror}; the previous version, if any, is intact") from e


def ensure_writable_dir(path) -> Path:
    "Create folder `path` if needed and check that files can be written in it, or say why not"
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path): pass
    except OSError as e:
        raise OSError(e.errno, f"Cannot write in output folder {path}: {e.strerror}. Choose another folder with --out.") from e
    return path
