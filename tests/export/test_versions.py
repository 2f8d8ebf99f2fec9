"""Version directories: what is a version, where it lives, and what comes next."""

import pytest

from export import versions


def make(base, *names):
  for name in names:
    (base / name).mkdir(parents=True)
  return str(base)


@pytest.mark.parametrize("name, version", [
    ("1", 1), ("00000123", 123), ("0", 0), ("123/", 123), ("-3", None), ("+4", None),
    ("1.5", None), ("12a", None), ("", None), ("²", None), (" 7", None)])
def test_only_names_made_of_ascii_digits_are_versions(name, version):
  assert versions.parse_version(name) == version


def test_a_zero_padded_dir_is_its_number_and_keeps_its_name(tmp_path):
  base = make(tmp_path, "00000123", "7", "export.partial-1", "7.report", "latest")
  (tmp_path / "9").write_text("a file, not a version dir")
  assert versions.version_dirs(base) == {7: f"{base}/7", 123: f"{base}/00000123"}
  assert versions.versions(base) == [7, 123]
  assert versions.latest_version_dir(base) == f"{base}/00000123"


def test_two_names_for_one_number_keep_the_one_that_sorts_last_as_tf_serving_does(tmp_path):
  base = make(tmp_path, "0007", "7", "007")
  assert versions.version_dirs(base) == {7: f"{base}/7"}


def test_a_missing_base_path_has_no_versions(tmp_path):
  missing = str(tmp_path / "nothing")
  assert versions.version_dirs(missing) == {}
  assert versions.latest_version_dir(missing) is None
  assert versions.next_version(missing) == 1


def test_the_next_version_is_above_every_existing_one_and_not_below_the_floor(tmp_path):
  base = make(tmp_path, "3", "00012", "notes")
  assert versions.next_version(base) == 13
  assert versions.next_version(base, at_least=1700000000) == 1700000000
  assert versions.next_version(str(tmp_path / "new"), at_least=5) == 5
