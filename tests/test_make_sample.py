"scripts/make_sample.py: the bundled sample is cut from a full CIFAR-10; a bad source is refused in one line"
import pytest

from tests.helpers import load_script


def test_a_missing_source_is_named_with_its_option(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        load_script('make_sample').main(['--src', str(tmp_path / 'nowhere'), '--out', str(tmp_path / 'sample.npz')])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and f': error: --src: {tmp_path / "nowhere"} does not exist; ' in line  # argparse's form
    assert not (tmp_path / 'sample.npz').exists()
