"""`rpe-pad lab validation-split`: the same object and training views, new queries."""

import json

import numpy as np
import pytest

from lab.validation_split import write_validation_split
from models.data import load_category
from training.synth.generate import SynthConfig, generate


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("synth") / "tiny", SynthConfig(seed=5, size=32, train_views=6, test_views=4),
                    progress=False)


def test_new_queries_of_the_same_object(category, tmp_path):
    out = write_validation_split(category, tmp_path, views=8, progress=False)
    assert out == tmp_path / "tiny" and (out / "train").resolve() == (category / "train").resolve()
    val, test = load_category(out), load_category(category)
    assert len(val.train) == len(test.train) == 6
    assert sorted(v.label for v in val.test) == ["Burrs", "Burrs", "Missing", "Missing", "Stains", "Stains", "good", "good"]
    val_poses = np.stack([v.w2c.numpy() for v in val.test])
    test_poses = np.stack([v.w2c.numpy() for v in test.test])
    assert np.abs(val_poses[:, None] - test_poses[None]).max(axis=(2, 3)).min() > 1e-3  # no query repeats the test split
    assert all(view.mask.any() == view.is_anomalous for view in val.test)  # each defect with its mask
    assert json.loads((out / "synth.json").read_text())["validation_split"]["views"] == 8
    again = write_validation_split(category, tmp_path / "again", views=8, progress=False)  # deterministic
    assert (again / "test" / "transforms.json").read_text() == (out / "test" / "transforms.json").read_text()
    other = write_validation_split(category, tmp_path / "other", views=8, split=1, progress=False)
    assert (other / "test" / "transforms.json").read_text() != (out / "test" / "transforms.json").read_text()


def test_refuses_a_category_its_synth_json_does_not_make(category, tmp_path):
    fake = tmp_path / "src" / "tiny"
    fake.mkdir(parents=True)
    (fake / "train").symlink_to(category / "train")
    saved = json.loads((category / "synth.json").read_text())
    saved["config"]["seed"] = 6  # another object
    (fake / "synth.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="not the ones its synth.json makes"):
        write_validation_split(fake, tmp_path / "out", views=4, progress=False)
    with pytest.raises(ValueError, match="no synth.json"):
        write_validation_split(category / "train", tmp_path / "out2", views=4, progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()  # a refusal writes nothing


def test_a_run_that_fails_leaves_nothing(category, tmp_path, monkeypatch):
    import lab.validation_split as vs

    def fail(*args, **kwargs):
        raise RuntimeError("synth: could not place a visible Burrs defect")

    monkeypatch.setattr(vs, "write_queries", fail)
    with pytest.raises(RuntimeError):
        write_validation_split(category, tmp_path, views=4, progress=False)
    assert list(tmp_path.iterdir()) == []  # no partial folder, and the same command can run again
