"""What `make dev` installs and what a wheel ships (issue 26): running needs no test extra, and the build
configuration leaves no folder of the package out (setuptools warns of each such folder, and a wheel without
the dashboard's templates or Kafka's pom would fail at run time)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def make_n(target: str) -> list[str]:
    """The commands ``make TARGET`` would run on a machine with no virtualenv yet."""
    done = subprocess.run(["make", "-n", target, "VENV=/nonexistent/venv"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_make_dev_installs_only_what_running_needs_and_make_test_adds_the_test_extra() -> None:
    dev = [line for line in make_n("dev") if "pip install" in line and "-e" in line]
    assert dev and all(line.rstrip().endswith("-e .") for line in dev), dev
    test = [line for line in make_n("test") if "pip install" in line and "-e" in line]
    assert any("'.[test]'" in line for line in test), test


def test_the_wheel_ships_every_data_folder_without_a_packaging_warning(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", ".taskstream",
                                                             "__pycache__", "node_modules"), symlinks=True)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-v",
                           "-w", str(tmp_path / "dist")], cwd=src, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert "absent from the `packages` configuration" not in output, output[-3000:]
    (wheel,) = (tmp_path / "dist").glob("taskstream-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for wanted in ("taskstream/api/ui/templates/base.html", "taskstream/api/ui/static/app.js",
                   "taskstream/cli/kafka/pom.xml", "taskstream/schemas/avro/ApiKey.avsc"):
        assert wanted in names, wanted
