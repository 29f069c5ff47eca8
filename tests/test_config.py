import pytest

from ecr_ray.config import PRESETS_DIR, ConfigError, DataConfig, describe, load_config


def test_presets_load_and_differ():
    presets = {p.stem: load_config(p.stem) for p in PRESETS_DIR.glob("*.yaml")}
    assert set(presets) == {"tiny", "cpu", "paper"}
    assert presets["tiny"].data.max_dialogues == 300
    assert presets["cpu"].data.max_dialogues is None
    assert presets["paper"].ray.link_actors > presets["cpu"].ray.link_actors
    assert all(cfg.name == name for name, cfg in presets.items())


def test_overrides_are_typed():
    cfg = load_config("tiny", ["data.dev_fraction=0.25", "ray.num_cpus=1", "data.max_dialogues=null", "data.split_files.test=/x.jsonl"])
    assert cfg.data.dev_fraction == 0.25 and cfg.ray.num_cpus == 1 and cfg.data.max_dialogues is None
    assert cfg.data.split_files == {"test": "/x.jsonl"}
    assert load_config("tiny", ["data.dev_fraction=1"]).data.dev_fraction == 1.0  # int accepted for float


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.dev_fractoin=0.1", "unknown config key data.dev_fractoin"),
        ("nope.key=1", "unknown config key nope"),
        ("data.dev_fraction=abc", "data.dev_fraction should be float"),
        ("ray.num_cpus=true", "ray.num_cpus should be int"),
        ("data.pool_file=null", "data.pool_file should be str"),
        ("data", "is not key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", [override])


def test_unknown_preset(tmp_path):
    with pytest.raises(ConfigError, match="preset 'huge' not found"):
        load_config("huge")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  colour: red\n")
    with pytest.raises(ConfigError, match="unknown config key data.colour"):
        load_config(bad)


def test_missing_data_names_the_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("ECR_DATA_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="ECR_DATA_DIR"):
        DataConfig(pool_file="redial/raw/absent.jsonl").root()


def test_data_dir_setting_wins(monkeypatch, data_root, tmp_path):
    monkeypatch.setenv("ECR_DATA_DIR", str(data_root))
    assert DataConfig(data_dir=str(tmp_path / "nowhere")).root() == data_root


def test_every_knob_is_described():
    rows = describe()
    assert {"data.dev_fraction", "ray.address", "data.split_files"} <= {k for k, _, _ in rows}
    assert all(doc for key, _, doc in rows if key != "name") and len(rows) >= 15
