import pytest

from ecr_ray.config import PRESETS_DIR, REPO_ROOT, ConfigError, DataConfig, describe, describe_markdown, load_config, output_values


def test_presets_load_and_differ():
    presets = {p.stem: load_config(p.stem) for p in PRESETS_DIR.glob("*.yaml")}
    assert set(presets) == {"tiny", "cpu", "paper"}
    assert presets["tiny"].data.max_dialogues == 300
    assert presets["cpu"].data.max_dialogues is None
    assert presets["paper"].data.link_pool.actors > presets["cpu"].data.link_pool.actors
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
        ("rec.context_encoder=bert", "rec.context_encoder should be one of 'minilm', 'prompt', got 'bert'"),
        ("gen.generator.dtype=fp8", "gen.generator.dtype should be one of 'float32', 'bfloat16', 'float16'"),
        ("rec.early_stop_metric=recall@5", "should be one of 'mean_recall', 'mean_recall_auc', 'recall@1'"),
        ("rec.train.epoch=3", "unknown config key rec.train.epoch"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", [override])


def test_a_removed_knob_is_refused_in_a_preset_and_ignored_in_a_saved_config():
    with pytest.raises(ConfigError, match="rec.channel_fit was removed: the hybrid's channel weights are always fitted"):
        load_config("tiny", ["rec.channel_fit=ranking"])
    saved = load_config("tiny").to_dict()
    saved["rec"].update(channel_fit="loss", channel_lr=0.01)  # what a model trained before 2026-12-03 carries
    assert load_config(None, base=saved) == load_config("tiny")


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
    assert {"data.dev_fraction", "ray.address", "data.split_files", "rec.train.lr", "emotion.infer_pool.actors"} <= {k for k, _, _ in rows}
    assert dict((k, d) for k, d, _ in rows)["rec.train.lr"] == "0.001"  # a section's own default, not the class's
    assert all(doc for key, _, doc in rows if key != "name") and len(rows) >= 15


def test_sections_keep_their_own_defaults():
    cfg = load_config(None, ["emotion.teacher.train.epochs=7", "gen.respond_pool.actors=3"])
    assert (cfg.emotion.teacher.train.epochs, cfg.emotion.teacher.train.lr, cfg.emotion.teacher.train.weight_decay) == (7, 5e-5, 0.01)
    assert (cfg.rec.train.lr, cfg.rec.train.weight_decay, cfg.gen.generator.train.lr) == (1e-3, 0.01, 1e-4)
    assert (cfg.gen.respond_pool.actors, cfg.gen.respond_pool.cpus, cfg.gen.respond_pool.batch_size) == (3, 1.0, 8)
    assert cfg.eval.scorer.max_tokens == 120 and cfg.emotion.llm.max_tokens == 40
    assert load_config(None, base=cfg.to_dict()) == cfg  # a recorded config loads back as it was


def test_stage_keys_leave_out_runtime_knobs():
    from ecr_ray.pipeline import stage_graph

    base = load_config("tiny")
    faster = load_config("tiny", ["rec.train.cpus_per_worker=2", "rec.context_pool.actors=2", "rec.eval_batch_size=64",
                                  "ray.num_cpus=1", "gen.respond_pool.batch_size=4", "eval.scorer.qps=1"])
    other = load_config("tiny", ["rec.train.lr=0.01"])
    assert "cpus_per_worker" not in output_values(base, "rec.train") and "lr" in output_values(base, "rec.train")
    hashes = lambda cfg: {s.name: s.digest(cfg, {n: "" for n in s.needs}) for s in stage_graph(cfg)}  # noqa: E731
    assert hashes(faster) == hashes(base)
    changed = {name for name, h in hashes(other).items() if h != hashes(base)[name]}
    assert changed == {"rec-train", "rec-ablations"}  # later stages follow through `needs`
    cv = load_config("tiny", ["rec.cv_folds=3", 'rec.cv_also={"wide": {hidden: 64}}'])
    assert {name for name, h in hashes(cv).items() if h != hashes(base)[name]} == {"rec-ablations"}  # the shipped model stays


def test_a_saved_model_config_this_version_cannot_read_names_its_file(tmp_path):
    from ecr_ray.artifacts import MODEL_CONFIG, model, model_config
    from ecr_ray.rundir import RunDir

    run = RunDir(tmp_path)
    saved = load_config("tiny").to_dict()
    saved["rec"]["min_cooccurrence"] = 2  # a knob an older version had
    run.write_json(f"{model('recommender')}/{MODEL_CONFIG}", saved)
    with pytest.raises(ConfigError, match=r"models/recommender/ecr_config\.json: unknown config key rec\.min_cooccurrence.*re-train"):
        model_config(run, "recommender")


def test_the_configuration_page_is_fresh():
    """docs/configuration.md is generated from the knobs' own descriptions: regenerate it when a knob changes."""
    page = (REPO_ROOT / "docs" / "configuration.md").read_text()
    assert page == describe_markdown(), "docs/configuration.md is stale: ecr-ray config --describe --markdown > docs/configuration.md"
    assert "| `gen.min_emotional_share` | `0.25` |" in page and "| `gen.generator.autocast_bf16` | `False` | `'auto'` |" in page


def test_precision_knobs_take_auto_and_resolve_from_the_hardware(monkeypatch, tmp_path):
    from ecr_ray import precision

    assert load_config("cpu").gen.generator.autocast_bf16 == "auto"
    with pytest.raises(ConfigError, match="should be one of 'auto', True, False"):
        load_config("tiny", ["gen.decoding.batch_bf16=sometimes"])
    for flags, native in [("fpu avx2 fma", False), ("fpu avx2 avx512f avx512_bf16", True), ("avx2 amx_bf16 amx_tile", True)]:
        precision._cpuinfo.cache_clear()
        (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nmodel name\t: test cpu\nflags\t\t: {flags}\n")
        monkeypatch.setattr(precision, "CPUINFO", tmp_path / "cpuinfo")
        assert precision.bf16_native("cpu") is native and precision.use_bf16("auto", "cpu") is native
        assert precision.use_bf16(True, "cpu") and not precision.use_bf16(False, "cpu")
        assert ("emulated" in precision.cpu_capability()) is not native and precision.cpu_model() == "test cpu"
    precision._cpuinfo.cache_clear()


def test_a_float_in_exponent_notation_is_a_float():
    cfg = load_config(None, ["rec.train.lr=5e-4", "rec.bias_lr=1E-2"])  # YAML 1.1 reads these as strings
    assert (cfg.rec.train.lr, cfg.rec.bias_lr) == (5e-4, 1e-2)
    with pytest.raises(ConfigError, match="rec.train.lr should be float"):
        load_config(None, ["rec.train.lr=5e-4x"])
