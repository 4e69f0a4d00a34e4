import ml_collections
import pytest

from jtl.config import ConfigError, apply_override, base_config, load_config


@pytest.fixture
def config():
    c = base_config()
    c.lock()
    return c


def test_overrides_take_the_type_of_the_current_value(config):
    apply_override(config, "learning_rate", "3e-4")
    apply_override(config, "total_steps", "7")
    apply_override(config, "parallel", "pmap")
    apply_override(config, "lora.rslora", "false")
    apply_override(config, "trainable", "('head/.*', 'norm/.*')")
    apply_override(config, "model.pretrained", "google/vit-base-patch16-224-in21k")
    assert (config.learning_rate, config.total_steps, config.parallel) == (3e-4, 7, "pmap")
    assert config.lora.rslora is False and config.trainable == ("head/.*", "norm/.*")
    assert config.model.pretrained == "google/vit-base-patch16-224-in21k"


def test_learning_rate_accepts_an_integer_literal(config):
    apply_override(config, "learning_rate", "1")
    assert config.learning_rate == 1.0 and isinstance(config.learning_rate, float)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("learnin_rate", "1", r"unknown config key 'learnin_rate'; closest: learning_rate"),
        ("model.nam", "x", r"unknown config key 'model.nam'; closest: model.name"),
        ("total_steps", "1.5", r"--config.total_steps=1.5: expected a int, got float"),
        ("lora.rslora", "maybe", r"--config.lora.rslora=maybe: expected true or false"),
    ],
)
def test_bad_overrides_name_the_key(config, key, value, message):
    with pytest.raises(ConfigError, match=message):
        apply_override(config, key, value)


def test_config_files_are_locked_and_checked(tmp_path):
    good = tmp_path / "good.py"
    good.write_text("from jtl.config import base_config\ndef get_config(arg=None):\n    return base_config()\n")
    config = load_config(str(good))
    with pytest.raises(AttributeError):
        config.new_key = 1  # locked: no new keys
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config(arg=None):\n    return {'lr': 1}\n")
    with pytest.raises(ConfigError, match=r"bad.py: get_config returned dict, not an ml_collections.ConfigDict"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match=r"no such file"):
        load_config(str(tmp_path / "missing.py") + ":arg")


def test_quickstart_config_variants():
    for variant in ("source", "scratch", "frozen", "full"):
        assert isinstance(load_config(f"configs/quickstart.py:{variant}"), ml_collections.ConfigDict)
    assert load_config("configs/quickstart.py:frozen").trainable == ("head/.*",)
