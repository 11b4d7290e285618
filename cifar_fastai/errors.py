"The errors the package raises for the user to act on: each message names what is wrong and what to do, in one line"

__all__ = ['UserError', 'ConfigError', 'RunFileError', 'PeerFailedError', 'MissingPackageError']


class UserError(Exception):
    "An error whose message says what to do; it reads the same when raised inside a fastai callback"
    # fastai's `Callback.__call__` rewrites the message of any exception raised in a callback, prefixing
    # "Exception occured in `X` when calling event `Y`:" on a line of its own: keep ours as it was written
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self): return self.message


class ConfigError(UserError, ValueError):
    "An option of a run is out of range or contradicts the run it continues"


class RunFileError(UserError, ValueError):
    "A file of a run folder is damaged, was changed, or comes from a newer version of the package"


class PeerFailedError(UserError, RuntimeError):
    "Another process of a data-parallel run failed, which ends this one too"


class MissingPackageError(UserError, ImportError):
    "A feature needs a package that is not installed"
