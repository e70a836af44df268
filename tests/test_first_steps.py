"""What a new user meets first: the README's set-up lines and map of the code, and
configs/cats.yaml out of the box (no data/cats, no network) saying what to do."""

from __future__ import annotations

import re
import shutil
import urllib.error
from pathlib import Path

import pytest

from tests.conftest import make_folder
from tests.helpers_robust import invoke

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def test_readme_has_a_cpu_only_install():
    setup = README.split("## Set up", 1)[1].split("\n## ", 1)[0]
    line = next(x for x in setup.splitlines() if "download.pytorch.org/whl/cpu" in x)
    assert "--index-url https://download.pytorch.org/whl/cpu" in line and "torchvision" in line


def test_architecture_section_lists_every_module():
    section = README.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    for path in sorted((REPO / "mobiletune").rglob("*.py")):
        rel = path.relative_to(REPO / "mobiletune").as_posix()
        if path.name in ("__init__.py", "__main__.py") or rel.endswith("_cmd.py"):
            continue  # packages and the one-per-command CLI modules are described as groups
        assert f"`{rel}`" in section, f"README's Architecture section does not mention {rel}"


@pytest.fixture
def cats(tmp_path: Path, monkeypatch) -> Path:
    """A fresh checkout's working directory: configs/cats.yaml, nothing else."""
    (tmp_path / "configs").mkdir()
    shutil.copy(REPO / "configs" / "cats.yaml", tmp_path / "configs" / "cats.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "configs" / "cats.yaml"


def test_cats_yaml_without_data_says_where_to_put_images(cats):
    res = invoke(["train", "--config", cats], 2)
    assert "data/cats not found" in res.stderr
    assert "data/cats/<class>/" in res.stderr and "--data" in res.stderr
    assert not (cats.parent.parent / "runs").exists()


def test_cats_yaml_offline_names_weights_with_a_local_file(cats, monkeypatch, tmp_path):
    import torchvision.models._api as api

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # nothing cached
    make_folder(tmp_path / "data" / "cats", size=32)
    res = invoke(["train", "--config", cats, "--device", "cpu", "-q"], 2)
    assert re.search(r"--weights \S*\.pth", res.stderr), res.stderr
    assert "without network" in res.stderr.lower()
    assert not (tmp_path / "runs").exists()
