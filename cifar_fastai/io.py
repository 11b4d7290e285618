"Files that are either whole or absent: atomic writes, tensor files loaded without running code, writable folders"
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from cifar_fastai.errors import RunFileError

__all__ = ['atomic_path', 'atomic_write', 'atomic_save', 'remove_temporaries', 'load_tensors', 'ensure_writable_dir']

_TMP = re.compile(r'\..+\.[a-z0-9_]{8}\.tmp')  # `atomic_path`'s temporaries: `mkstemp`'s 8 random characters


@contextmanager
def atomic_path(path):
    "A temporary file beside `path` to write by name; on success it is fsynced and renamed over `path`, else removed"
    path = Path(path)
    try: fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    except OSError as e: raise _unwritten(path, e) from e
    os.close(fd)
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try: os.fsync(fd)
        finally: os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # `mkstemp` makes 0600 files; give the mode `open` would
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise _unwritten(path, e) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _unwritten(path: Path, e: OSError) -> OSError:
    "The error of a failed atomic write of `path`, in one line that names it and says what to do"
    why = e.strerror or str(e)
    return OSError(e.errno, f"Could not write {path}: {why}; the previous version, if any, is intact: free space or "
                            f"make {path.parent} writable, then run the command again (a training run goes on "
                            f"with --resume RUN)")


@contextmanager
def atomic_write(path, mode: str = 'wb', **kwargs):
    "Open a temporary file beside `path`; on success flush, fsync and rename it over `path`, else remove it"
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f: yield f


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_save(obj, path):
    "`torch.save` `obj` to `path` so that a crash or a full disk leaves the previous file intact"
    with atomic_write(path) as f: torch.save(obj, f)


def remove_temporaries(folder) -> list[Path]:
    "Remove what killed processes left of `atomic_path`'s writes in `folder`; the paths removed"
    found = [p for p in Path(folder).glob('.*.tmp') if _TMP.fullmatch(p.name)]
    for p in found: p.unlink(missing_ok=True)
    return found


def load_tensors(path, what: str, fix: str, map_location='cpu'):
    "`torch.load` the file `path` (`what` it should be) without running code from it, or say in one line why not"
    # fix: what to do when the file is refused. A file that cannot be opened raises as `open` does.
    path = Path(path)
    with open(path, 'rb') as f:
        try: return torch.load(f, map_location=map_location, weights_only=True)
        except Exception as e:  # torch's reader raises 'OSError: Invalid argument' for a truncated file too
            raise RunFileError(f"{path} is not {what}: {_why_not_loaded(e)}; {fix}") from e


def _why_not_loaded(e: Exception) -> str:
    "What `torch.load` says in `e`, in a few words: the object it refused to build, or how the file is broken"
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    detail = next((l for l in lines if 'unsupported' in l.lower()), lines[0] if lines else 'the file ends early')
    detail = detail.split('. ')[0].rstrip('.')  # torch's first sentence says it; the rest is advice for its users
    if 'GLOBAL' in detail: return f'loading it would run code ({detail})'
    return f'it is damaged or was not written by torch.save ({type(e).__name__}: {detail})'


def ensure_writable_dir(path) -> Path:
    "Create folder `path` if needed and check that files can be written in it, or say why not"
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path): pass
    except OSError as e:
        raise OSError(e.errno, f"Cannot write in output folder {path}: {e.strerror}. "
                               "Choose another folder with --out.") from e
    return path
