"""What a new user meets first: the README (its set-up lines, one page with the main job near
the top, links that resolve), and configs/cats.yaml out of the box (no data/cats, no network)
saying what to do."""

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


def test_readme_is_one_page_with_the_main_job_first():
    lines = README.splitlines()
    assert len(lines) <= 160, f"README.md has {len(lines)} lines; details belong in docs/"
    first = next(i for i, x in enumerate(lines, 1) if x.startswith("mobiletune train --config"))
    assert first <= 40, f"the main job's first command is on line {first}, not in the first 40"
    assert "## The main job" in "\n".join(lines[:first])


def test_readme_links_point_at_files_that_exist():
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    local = [x for x in links if "://" not in x and not x.startswith("mailto:")]
    assert any(x.startswith("docs/") and x.endswith(".md") for x in local), "no link to docs/"
    missing = [x for x in local if not (REPO / x).is_file()]
    assert missing == [], f"README.md links to files that do not exist: {missing}"


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
