"The package as a user meets it: a quiet import that sets what albumentations needs, a version, grouped options"
import ast
import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from cifar_fastai import cli
from cifar_fastai.startup import quiet_imports

ROOT = Path(__file__).resolve().parents[1]
# Run in a fresh interpreter: albumentations' update check replaced by a stub that says it ran, so nothing goes online
IMPORT = '''
import sys, types, warnings
stub = types.ModuleType('albumentations.check_version')
stub.check_for_updates = lambda: print('update check')
sys.modules['albumentations.check_version'] = stub
import os, cifar_fastai
print(os.environ.get('NO_ALBUMENTATIONS_UPDATE'))
warnings.warn('ours', FutureWarning)
'''


def _import_in_fresh_python(env_value: str | None):
    env = {k: v for k, v in os.environ.items() if k not in ('NO_ALBUMENTATIONS_UPDATE', 'PYTHONWARNINGS')}
    if env_value is not None: env['NO_ALBUMENTATIONS_UPDATE'] = env_value
    env['PYTHONPATH'] = os.pathsep.join([str(ROOT), env.get('PYTHONPATH', '')])
    return subprocess.run([sys.executable, '-c', IMPORT], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize('env_value,printed', [(None, ['1']), ('0', ['update check', '0'])])
def test_import_sets_no_albumentations_update_unless_the_user_did(env_value, printed):
    done = _import_in_fresh_python(env_value)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == printed  # a user's own '0' lets albumentations check, as it asks


def test_import_prints_no_dependency_warning_and_hides_none_of_ours():
    done = _import_in_fresh_python(None)
    warnings = [l for l in done.stderr.splitlines() if 'Warning' in l]
    assert len(warnings) == 1 and warnings[0].endswith('FutureWarning: ours'), done.stderr


def test_quiet_imports_keeps_a_value_already_set(monkeypatch):
    monkeypatch.setenv('NO_ALBUMENTATIONS_UPDATE', 'custom')
    with quiet_imports(): assert os.environ['NO_ALBUMENTATIONS_UPDATE'] == 'custom'


def test_version_is_the_installed_distribution_s(capsys):
    with pytest.raises(SystemExit) as e: cli.main(['--version'])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"cifar-fastai {version('cifar-fastai')}"


def _help_groups(command: str, capsys) -> dict:
    "Each titled section of `cifar-fastai COMMAND --help`: the options it lists"
    with pytest.raises(SystemExit): cli.main([command, '--help'])
    text = capsys.readouterr().out
    sections = re.split(r'\n\n(?=\S)', text)
    return {s.split(':')[0]: re.findall(r'^  (--[\w-]+)', s, re.M) for s in sections[1:]}


def test_train_help_groups_every_option(capsys):
    groups = _help_groups('train', capsys)
    assert list(groups) == ['options', 'data', 'optimisation', 'schedule', 'augmentation', 'speed', 'output']
    assert groups['options'] == []  # only -h
    assert {'--data', '--valid-pct', '--bs'} <= set(groups['data'])
    assert {'--lr', '--lr-mult', '--lr-find-iters', '--momentum', '--wd', '--ema', '--bn-bias-scale'} <= set(
        groups['optimisation'])
    assert {'--epochs', '--schedule', '--plateau-patience', '--plateau-min-lr'} <= set(groups['schedule'])
    assert groups['augmentation'] == ['--pad', '--no-flip', '--alternate-flip', '--cutout', '--cutout-p']
    assert {'--precision', '--sync-bn'} <= set(groups['speed']) and {'--out', '--resume'} <= set(groups['output'])


def test_lr_find_help_has_no_schedule_and_no_resume(capsys):
    groups = _help_groups('lr-find', capsys)
    assert 'schedule' not in groups and groups['output'] == ['--out'] and '--lr-find-iters' in groups['optimisation']


def _package_imports(path: Path) -> set:
    "The package's modules `path` imports when it is imported itself (module level, not inside functions)"
    names = set()
    for node in ast.parse(path.read_text()).body:
        for n in ast.walk(node) if isinstance(node, ast.With) else [node]:  # `__init__` imports inside a `with`
            if isinstance(n, ast.ImportFrom) and (n.module or '').startswith('cifar_fastai.'): names.add(n.module[13:])
    return names


def test_the_package_has_no_import_cycle():
    modules = {p.stem: _package_imports(p) for p in (ROOT / 'cifar_fastai').glob('*.py') if p.stem != '__init__'}
    def reaches(start, target, seen=()):
        return any(m == target or (m not in seen and reaches(m, target, seen + (m,))) for m in modules.get(start, ()))
    assert 'errors' in modules['distributed'] and 'run' not in modules['distributed']  # ConfigError from errors.py
    assert [m for m in modules if reaches(m, m)] == []


def test_without_accelerate_data_parallel_training_says_what_to_install(monkeypatch):
    import importlib
    from cifar_fastai.errors import MissingPackageError, UserError
    monkeypatch.setitem(sys.modules, 'fastai.distributed', None)  # as if Accelerate, which it needs, were missing
    monkeypatch.delitem(sys.modules, 'cifar_fastai.distributed', raising=False)
    with pytest.raises(MissingPackageError, match='pip install accelerate') as e:
        importlib.import_module('cifar_fastai.distributed')
    assert isinstance(e.value, UserError)  # the command line prints it in one line
