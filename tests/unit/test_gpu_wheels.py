"""scripts/gpu_wheels.py on fabricated wheels (no downloads): the folder check that stands in for the lent GPU
machine's install, and which wheels the GPU check installs there."""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("gpu_wheels", ROOT / "scripts" / "gpu_wheels.py")
gpu_wheels = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_wheels)


def wheel(
    folder: Path, name: str, version: str, requires: tuple[str, ...] = (), tag: str = "py3-none-any"
) -> Path:
    path = folder / f"{name}-{version}-{tag}.whl"
    meta = "\n".join([f"Name: {name}", f"Version: {version}", *(f"Requires-Dist: {r}" for r in requires)])
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA", meta + "\n")
    return path


def test_machine_list_has_the_gpu_machines_torch() -> None:
    machine = gpu_wheels.machine_packages()
    assert machine["torch"] == "2.11.0" and "diffusers" not in machine and "lightning" in machine


def test_check_accepts_a_closed_folder_and_refuses_gaps(tmp_path: Path, capsys) -> None:
    wheel(tmp_path, "pkg_a", "1.0", ("pkg_b>=2", "torch>=2.0", "pytest; extra == 'dev'"))
    wheel(tmp_path, "pkg_b", "2.1")
    assert gpu_wheels.check(tmp_path) == []
    wheel(tmp_path, "pkg_c", "1.0", ("not_anywhere_pkg",), tag="cp311-cp311-manylinux2014_x86_64")
    with pytest.raises(SystemExit):
        gpu_wheels.check(tmp_path)
    out = capsys.readouterr().out
    assert "needs not_anywhere_pkg" in out and "not installable on cp312" in out
    wheel(tmp_path, "torch_too_new", "1.0", ("torch>=2.12",))
    with pytest.raises(SystemExit):
        gpu_wheels.check(tmp_path)  # the machine's torch is 2.11.0


def test_missing_installs_absent_or_too_old_projects_only(tmp_path: Path) -> None:
    absent = wheel(tmp_path, "surely_not_installed_pkg", "1.0")
    present = wheel(tmp_path, "pytest", "1.0")  # installed here: left alone
    assert gpu_wheels.missing(tmp_path) == [absent]
    wheel(tmp_path, "wants_new_pytest", "1.0", ("pytest>=999",))
    assert present in gpu_wheels.missing(tmp_path), "a copy too old for another wheel is replaced"
