"""Config: defaults, YAML/JSON loading, overrides, and errors that say what is wrong."""

import json

import pytest

from lmforge.config import Config, dump_config, load_config
from lmforge.errors import LmforgeError


def test_every_field_has_a_default_and_round_trips_through_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(Config()))
    assert load_config(path) == Config()


def test_json_config_and_set_overrides(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"train": {"epochs": 2}, "data": {"path": "x.csv"}}))
    cfg = load_config(path, ["train.lr=0.001", "data.split.stratify=false", "train.max_steps=null"])
    assert cfg.train.epochs == 2 and cfg.train.lr == 0.001
    assert cfg.data.split.stratify is False and cfg.train.max_steps is None
    assert cfg.data.path == "x.csv"


def test_unknown_key_suggests_the_closest_valid_one():
    with pytest.raises(LmforgeError, match=r"unknown config key 'train.learning_rat'|'train.lr'"):
        load_config({"train": {"learning_rat": 1}})
    with pytest.raises(LmforgeError, match="did you mean 'model.n_layers'"):
        load_config({"model": {"n_layer": 1}})


def test_value_out_of_range_names_the_key():
    with pytest.raises(LmforgeError, match=r"data\.split\.test.*1\.5"):
        load_config({"data": {"split": {"test": 1.5}}})


def test_heads_must_divide_model_width():
    with pytest.raises(LmforgeError, match="n_heads"):
        load_config({"model": {"d_model": 30, "n_heads": 4}})


@pytest.mark.parametrize("text", ["a: [1, 2", "- just\n- a list\n"])
def test_broken_or_non_mapping_yaml_is_a_clear_error(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(LmforgeError, match="bad.yaml"):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(LmforgeError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_malformed_set_override():
    with pytest.raises(LmforgeError, match="key=value"):
        load_config({}, ["train.lr"])


def test_readme_config_reference_lists_every_field():
    from pathlib import Path

    from lmforge.config import _valid_keys

    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    sections = {"data", "data.clean", "data.split", "tokenizer", "model", "train", "eval"}
    missing = [k for k in _valid_keys(Config) if k not in sections and f"`{k}`" not in readme]
    assert not missing, f"README's config reference lacks {missing}"
