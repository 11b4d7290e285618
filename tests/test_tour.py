"examples/tour.ipynb stays true: it runs on the bundled sample, and its stored outputs show the pictures"
from pathlib import Path

import nbformat
from nbclient import NotebookClient

TOUR = Path(__file__).resolve().parents[1] / 'examples' / 'tour.ipynb'


def _pictures(nb) -> list:
    "Indices of the code cells that show an image"
    return [i for i, cell in enumerate(nb.cells) if cell.cell_type == 'code'
            and any('image/png' in out.get('data', {}) for out in cell.get('outputs', []))]


def _errors(nb) -> list:
    return [out for cell in nb.cells if cell.cell_type == 'code' for out in cell.get('outputs', [])
            if out.output_type == 'error' or (out.output_type == 'stream' and out.name == 'stderr')]


def test_the_stored_tour_shows_its_pictures_and_no_error():
    nb = nbformat.read(TOUR, as_version=4)
    # the batch, the range test, accuracy per class, mistakes, Grad-CAM, confusion matrix, top losses
    assert len(_pictures(nb)) == 7 and _errors(nb) == []
    assert all(cell.execution_count for cell in nb.cells if cell.cell_type == 'code')


def test_the_tour_runs_on_the_sample_and_draws_the_same_pictures(tmp_path):
    nb = nbformat.read(TOUR, as_version=4)
    stored = _pictures(nb)
    for cell in nb.cells:
        if cell.cell_type == 'code': cell.outputs = []
    NotebookClient(nb, timeout=600, kernel_name='python3', resources={'metadata': {'path': str(tmp_path)}}).execute()
    assert _pictures(nb) == stored and _errors(nb) == []
