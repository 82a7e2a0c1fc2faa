"""evaluate meets the same bad input as explain with the same one line and exit 2: -o, --labels."""
import shutil

import pytest

from helpers import DIGIT_IMAGES, DIGITS, assert_one_line_error, run_cli


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for path in DIGIT_IMAGES:
        shutil.copy(path, folder / path.name)
    return folder


def evaluate(images, *extra):
    return ["evaluate", DIGITS, images, "--methods", "rap", "--fractions", "0,all", "--quiet", *extra]


def test_out_dir_that_is_a_file(tmp_path, images, capsys):
    in_the_way = tmp_path / "report"
    in_the_way.write_text("not a folder")
    code, out, err = run_cli(evaluate(images, "-o", in_the_way), capsys)
    assert_one_line_error(code, err, str(in_the_way), "exists and is not a folder")
    assert in_the_way.read_text() == "not a folder"


def test_out_dir_with_a_name_too_long_leaves_nothing(tmp_path, images, capsys):
    code, out, err = run_cli(evaluate(images, "-o", tmp_path / "new" / ("y" * 300) / "report"), capsys)
    assert_one_line_error(code, err, "cannot write there")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


def test_labels_file_with_the_wrong_number_of_lines(tmp_path, images, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("zero\none\ntwo\n")
    code, out, err = run_cli(evaluate(images, "--labels", labels, "-o", tmp_path / "report"), capsys)
    assert_one_line_error(code, err, "labels.txt: 3 labels, but the model has 10 classes")
    assert not (tmp_path / "report").exists()
