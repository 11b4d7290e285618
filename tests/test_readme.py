"The README stays true: its Python session runs on the bundled sample, its Quickstart matches .ci/run"
import re
from pathlib import Path

import pytest

from cifar_fastai.expected import measured_runs

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / 'README.md').read_text()


def test_readme_python_session_runs(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # lr_find keeps a temporary copy of the model beside the working folder
    code = re.search(r'## From Python.*?```python\n(.*?)```', README, re.S).group(1)
    scope = {}
    exec(compile(code, 'README.md', 'exec'), scope)
    learn, maps = scope['learn'], scope['maps']
    assert len(learn.epoch_record.rows) == 2 and learn.epoch_record.rows[-1]['lr'] > 0
    assert [tuple(m.shape) for m in maps] == [(4, 32, 32), (4, 32, 32)]
    assert all(0 <= m.min() and m.max() <= 1 for m in maps)


def test_quickstart_has_two_commands_and_ci_runs_its_test_command():
    block = re.search(r'## Quickstart\s*```bash\n(.*?)```', README, re.S).group(1).strip().splitlines()
    assert len(block) == 2 and 'cifar-fastai train' in block[0] and 'pytest' in block[1]
    ci = (ROOT / '.ci' / 'run').read_text()
    assert "pip install -q -e '.[test]'" in ci and 'python -m pytest -q' in ci and "-e '.[test]'" in block[1]


def _results_table() -> list[list[str]]:
    "The cells of each row of README's 'What you get' table"
    table = re.search(r'## What you get.*?\n(\| epochs.*?)\n\n', README, re.S).group(1).splitlines()[2:]
    return [[cell.strip() for cell in row.strip('|').split('|')] for row in table]


@pytest.mark.parametrize('row', _results_table(), ids=lambda row: f'{row[0]} {row[1]}')
def test_readme_results_are_what_the_measured_runs_reached(row):
    epochs, command, plain, tta, minutes = row
    schedule = 'plateau' if command == 'the default' else re.search(r'--schedule ([\w-]+)', command).group(1)
    options = re.sub(r'--(schedule|epochs) \S+ ?', '', command.strip('`')).strip() if '--' in command else ''
    runs = sorted((m for m in measured_runs() if (m.schedule, m.epochs, m.flags) == (schedule, int(epochs), options)),
                  key=lambda m: m.seed)
    assert runs and (f"--epochs {epochs}" in command or command == 'the default')
    assert re.findall(r'\d+\.\d\d', plain) == [f'{100 * m.test_accuracy:.2f}' for m in runs]
    assert re.findall(r'\d+\.\d\d', tta) == [f'{100 * m.tta_accuracy:.2f}' for m in runs]
    assert re.findall(r'\d+', minutes) == [str(int(m.minutes + .5)) for m in runs]  # as `train` quotes them
    elsewhere = {m.processor.split()[-1] for m in runs if 'Xeon' not in m.processor}  # the header names the Xeon
    assert all(f'({name})' in minutes for name in elsewhere)
