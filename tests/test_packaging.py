"""What ships: a licence file named by the metadata, and no pytest files in the package."""

import pathlib

import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_license_file_is_declared_and_present():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    assert "MIT License" in (ROOT / "LICENSE").read_text()


def test_build_backend_supports_spdx_license_strings():
    # A string `license` (PEP 639) needs setuptools >= 77.
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    assert "setuptools>=77" in requires


def test_no_pytest_files_inside_the_package():
    package = ROOT / "src" / "crossentropy"
    assert not list(package.rglob("conftest.py"))
