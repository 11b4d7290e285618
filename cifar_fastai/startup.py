"Before the dependencies are first imported: no online update check, no warnings meant for their authors"
import os
import warnings
from contextlib import contextmanager

__all__ = ['DEPENDENCY_WARNINGS', 'quiet_imports']

# (category, start of the message) of warnings that dependencies raise about their own code while being imported
DEPENDENCY_WARNINGS = [
    (FutureWarning, r'`torch\.jit\.script` is deprecated'),  # fastai.layers scripts its activations at import
    # albumentations imports huggingface_hub, whose `tqdm.auto` asks for ipywidgets in Jupyter
    (Warning, r'IProgress not found'),
]


@contextmanager
def quiet_imports():
    "Import dependencies in the block: albumentations without its update check, without `DEPENDENCY_WARNINGS`"
    # albumentations asks the network for a newer version when it is imported, unless this is set; a user's own
    # value stays (https://github.com/albumentations-team/albumentations/blob/main/albumentations/__init__.py)
    os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')
    with warnings.catch_warnings():  # the filters are put back after the block: later warnings, ours too, show
        for category, message in DEPENDENCY_WARNINGS: warnings.filterwarnings('ignore', message, category)
        yield
