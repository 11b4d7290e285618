"scripts/bench_speed.py refuses a data folder it cannot read in one line, before it starts any worker"
import pytest

from tests.helpers import load_script


def test_a_folder_without_class_folders_is_named_in_one_line(tmp_path):
    (tmp_path / 'train').mkdir()  # a train folder, but no test folder
    with pytest.raises(SystemExit) as e: load_script('bench_speed').main(['--data', str(tmp_path)])
    assert e.value.code == (f"bench_speed: {tmp_path / 'test'} is not a folder: --data needs class folders "
                            f"test/<class>/*.png|jpg (the reference path reads files)")
