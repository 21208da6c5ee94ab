"""builtin:hsk-levels (each graded Chinese sentence of the installed `hsk-sentences-audio` with
its HSK level) and the text regression quickstart on it; builtin:diabetes still trains the
table's MLP."""

import json

import pytest
import yaml

from lmforge import pipeline
from lmforge.config import DataConfig, load_config
from lmforge.data.builtin import BUILTIN_HSK_LEVELS, read_builtin
from lmforge.errors import LmforgeError
from lmforge.tasks import inputs_of, recipe_for, tabular, text_regression
from lmforge.tasks.text_regression import QUICKSTART_TEXTS, prepare_regression_data

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_sentences_read_with_their_level_as_a_number():
    records = read_builtin(BUILTIN_HSK_LEVELS)
    assert records.rows_read == len(records.texts) > 4000
    assert all(text.strip() for text in records.texts)
    levels = [float(label) for label in records.labels]
    assert set(levels) == {1.0, 2.0, 3.0, 4.0, 5.0, 6.0}
    data = prepare_regression_data(DataConfig(path=BUILTIN_HSK_LEVELS, label_column="level"))
    sizes = data.report["split_sizes"]
    assert sizes["test"] > 300 and sum(sizes.values()) == data.report["rows_kept"]
    assert not set(data.test.texts) & set(data.train.texts)
    assert 1 <= data.report["target_quantiles"]["train"]["mean"] <= 6


def test_init_writes_a_regression_config_that_trains_on_it():
    raw = pipeline.init_config("regression", BUILTIN_HSK_LEVELS)
    cfg = load_config(yaml.safe_load(raw))
    assert (cfg.task, cfg.data.path, cfg.data.label_column) == (
        "regression", BUILTIN_HSK_LEVELS, "level")
    assert recipe_for(cfg.task, "text") is text_regression.RECIPE
    with pytest.raises(LmforgeError, match=f"builtin:reviews-zh has no numeric target.*"
                                           f"{BUILTIN_HSK_LEVELS}"):
        pipeline.init_config("regression", "builtin:reviews-zh")


def test_the_diabetes_quickstart_still_trains_the_table_mlp():
    cfg = pipeline.quickstart_config(fast=True, task="regression", data="builtin:diabetes")
    assert (cfg.data.path, cfg.model.arch) == ("builtin:diabetes", "mlp")
    assert recipe_for(cfg.task, inputs_of(cfg)) is tabular.REGRESSION


@pytest.mark.timeout(180)
def test_the_regression_quickstart_trains_text_regression_on_the_sentences(
        tmp_path, monkeypatch, capsys):
    fast, full = (text_regression.RECIPE.quickstart_config(f) for f in (True, False))
    assert fast.data.path == full.data.path == BUILTIN_HSK_LEVELS
    assert fast.train.epochs < full.train.epochs

    def tiny(fast):  # the real quickstart config with a model and schedule a test can afford
        real = text_regression.TextRegressionTask.quickstart_config(text_regression.RECIPE, fast)
        return load_config(real, ["model.d_model=32", "model.n_layers=1", "model.n_heads=2",
                                  "model.d_ff=64", "model.max_length=24", "train.max_steps=20",
                                  "train.eval_every=10", "eval.bootstrap=20",
                                  f"data.cache_dir={tmp_path / 'cache'}"])

    monkeypatch.setattr(text_regression.RECIPE, "quickstart_config", tiny)
    result = pipeline.quickstart(out=tmp_path / "run", fast=True, task="regression")
    report = json.loads((result.run_dir / "eval.json").read_text())
    assert report["n"] > 300 and set(report["baselines"]) == {"train_mean", "tfidf_ridge"}
    printed = capsys.readouterr().err
    assert "tfidf_ridge" in printed and f"lmforge predict {result.bundle_dir}" in printed
    assert all(text in printed for text in QUICKSTART_TEXTS)
