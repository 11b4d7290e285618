"The README stays true: its Python session runs on the bundled sample, its Quickstart matches .ci/run"
import re
from pathlib import Path

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
