"examples/tour.ipynb stays true: it runs on the bundled sample, and its stored outputs show the pictures"
import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

TOUR = Path(__file__).resolve().parents[1] / 'examples' / 'tour.ipynb'
QUICK = dict(epochs=1, range_test_batches=10)  # the tour's 8 and 20 are slower, draw the same pictures


def _pictures(nb) -> list:
    "Indices of the code cells that show an image"
    return [i for i, cell in enumerate(nb.cells) if cell.cell_type == 'code'
            and any('image/png' in out.get('data', {}) for out in cell.get('outputs', []))]


def _errors(nb) -> list:
    return [out for cell in nb.cells if cell.cell_type == 'code' for out in cell.get('outputs', [])
            if out.output_type == 'error' or (out.output_type == 'stream' and out.name == 'stderr')]


def _parameters(nb):
    "The cell tagged `parameters` (papermill's convention): the values a run of the notebook may change"
    cells = [cell for cell in nb.cells if 'parameters' in cell.metadata.get('tags', [])]
    assert len(cells) == 1
    return cells[0]


def _set_parameters(nb, **values):
    "Give the variables of the `parameters` cell these values, as papermill would"
    cell = _parameters(nb)
    for name, value in values.items():
        cell.source, n = re.subn(rf'^{name} = .*$', f'{name} = {value!r}', cell.source, flags=re.M)
        assert n == 1, f'the parameters cell sets no {name}'


def _epochs_printed(nb) -> list:
    return [int(n) for cell in nb.cells if cell.cell_type == 'code' for out in cell.get('outputs', [])
            if out.output_type == 'stream' for n in re.findall(r'^epoch (\d+): test accuracy', out.text, re.M)]


def test_the_stored_tour_shows_its_pictures_and_no_error():
    nb = nbformat.read(TOUR, as_version=4)
    # the batch, the range test, accuracy per class, mistakes, Grad-CAM, confusion matrix, top losses
    assert len(_pictures(nb)) == 7 and _errors(nb) == []
    assert all(cell.execution_count for cell in nb.cells if cell.cell_type == 'code')
    # the outputs are those of the whole tour, not of the quick run below
    epochs = re.match(r'epochs = (\d+)', _parameters(nb).source)
    assert epochs and _epochs_printed(nb) == list(range(1, int(epochs.group(1)) + 1))


def test_the_tour_runs_on_the_sample_and_draws_the_same_pictures(tmp_path):
    nb = nbformat.read(TOUR, as_version=4)
    stored = _pictures(nb)
    for cell in nb.cells:
        if cell.cell_type == 'code': cell.outputs = []
    _set_parameters(nb, **QUICK)
    NotebookClient(nb, timeout=600, kernel_name='python3', resources={'metadata': {'path': str(tmp_path)}}).execute()
    assert _pictures(nb) == stored and _errors(nb) == [] and _epochs_printed(nb) == [1]
