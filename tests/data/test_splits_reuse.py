"""finetune and resume train on the parent's exact split, whatever the folder gained since."""

from __future__ import annotations

from mobiletune.config.load import load_config
from mobiletune.training import run as pipeline
from mobiletune.training.stage import Callbacks
from tests.conftest import make_folder, make_image, tiny_config


class Recorder(Callbacks):
    def __init__(self) -> None:
        self.messages: list[str] = []

    def on_message(self, text: str) -> None:
        self.messages.append(text)


def test_finetune_reuses_the_parent_split(tmp_path):
    data = make_folder(tmp_path / "data", per_class=6)
    run = pipeline.train(load_config(tiny_config(tmp_path, data)))
    for i in range(4):  # new photos arrive after training
        make_image(data / "a" / f"new_{i}.jpg", seed=500 + i)
    (data / "b" / "b_1.jpg").unlink()
    rec = Recorder()
    child = pipeline.finetune(str(run), {"finetune.unfreeze": 1, "finetune.epochs": 1}, rec)
    parent_rows = set((run / "splits.csv").read_text().splitlines())
    child_rows = set((child / "splits.csv").read_text().splitlines())
    assert child_rows == {r for r in parent_rows if "b_1.jpg" not in r}
    assert not any("new_" in r for r in child_rows)
    assert any("no longer exist" in m for m in rec.messages)


def test_finetune_on_other_data_scans_it(tmp_path):
    data = make_folder(tmp_path / "data", per_class=6)
    other = make_folder(tmp_path / "other", per_class=5)
    run = pipeline.train(load_config(tiny_config(tmp_path, data)))
    child = pipeline.finetune(str(run), {"finetune.unfreeze": 1, "finetune.epochs": 1,
                                         "data.root": str(other)})
    assert str(other) in (child / "splits.csv").read_text()
