"""Task recommendation on tiny interaction logs made here: the leave-last-out split by time,
SASRec and matrix factorization trained and ranked over all items beside popularity and
item-kNN, exact resume, predict, and POST /v1/recommend with keys and metering."""

import csv
import json
import random

import pytest
import yaml
from safetensors.torch import load_file
from serve_support import app_client, auth, settings

import lmforge
from lmforge.config import load_config
from lmforge.data.interactions import InteractionColumns, leave_last_out, read_interactions
from lmforge.errors import LmforgeError
from lmforge.serve.billing import keys, ledger
from lmforge.serve.billing.database import open_database

pytestmark = pytest.mark.usefixtures("one_thread")

N_ITEMS = 30


def cycle_log(n_users=40, length=8, seed=0):
    """Each user walks the items in a cycle (item i, then i + 1) from a random start, one
    step per time unit: the next item is always predictable, never one they had."""
    rng = random.Random(seed)
    rows = []
    for u in range(n_users):
        start, t0 = rng.randrange(N_ITEMS), rng.randrange(1000)
        rows += [(f"u{u}", f"i{(start + s) % N_ITEMS}", t0 + s) for s in range(length)]
    rng.shuffle(rows)  # the file's order is not the time order
    return rows


def write_csv(path, rows, header=("user", "item", "timestamp")):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def tiny(data, arch="sasrec", **train):
    return {"task": "recommendation", "data": {"path": str(data)},
            "model": {"arch": arch, "d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64,
                      "max_length": 8, "dropout": 0.0},
            "train": {"max_steps": 80, "batch_size": 16, "lr": 5e-3, "eval_every": 40,
                      **train},
            "eval": {"bootstrap": 50}}


@pytest.fixture(scope="module")
def cycles(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("data") / "cycles.csv", cycle_log())


@pytest.fixture(scope="module")
def sasrec_run(tmp_path_factory, cycles):
    return lmforge.train(tiny(cycles), out=tmp_path_factory.mktemp("runs") / "sasrec",
                         show_progress=False)


def test_the_split_never_trains_on_a_users_later_interaction(tmp_path):
    rows = [("a", "x1", 5), ("a", "x2", 1), ("b", "x1", 2), ("a", "x3", 3), ("a", "x4", 3),
            ("b", "x2", 1), ("c", "x9", 7), ("a", "x5", 9), ("b", "x3", 4), ("a", "x2", 10),
            ("", "x1", 1), ("b", "x4", "yesterday")]
    path = write_csv(tmp_path / "log.csv", rows)
    log = read_interactions(str(path), "auto", InteractionColumns())
    # by time, ties (x3, x4 at 3) in the file's order; a's repeat of x2 and the broken rows
    # are counted, never silently dropped
    assert log.histories == {"a": ["x2", "x3", "x4", "x1", "x5"], "b": ["x2", "x1", "x3"],
                             "c": ["x9"]}
    assert log.report["dropped"] == {"missing_user": 1, "bad_timestamp": 1,
                                     "repeated_interaction": 1}
    assert log.report["examples"]["bad_timestamp"] == [13]  # the line in the file
    split = leave_last_out(log.histories, 3)
    times = {}  # of each (user, item)'s first interaction, the one kept
    for user, item, t in rows:
        if user and isinstance(t, int):
            times.setdefault((user, item), t)
    for user, test_item in split.test.items():
        held_out = [times[(user, split.val[user])], times[(user, test_item)]]
        assert all(times[(user, i)] <= min(held_out) for i in split.train[user])
        assert held_out[0] <= held_out[1]
    assert split.test == {"a": "x5", "b": "x3"} and split.val == {"a": "x1", "b": "x1"}
    assert split.train["c"] == ["x9"] and split.train_only_users == 1  # too few: train only


def test_a_missing_column_or_a_bad_knob_is_a_clear_error(tmp_path):
    path = write_csv(tmp_path / "log.csv", [("a", "x", 1)], header=("customer", "item", "ts"))
    with pytest.raises(LmforgeError, match="no column 'user'.*recommendation.user_column"):
        lmforge.train(tiny(path), out=tmp_path / "r", show_progress=False)
    from lmforge import pipeline  # `lmforge init` finds the columns by their names

    starter = load_config(yaml.safe_load(pipeline.init_config("recommendation", path)))
    found = starter.recommendation
    assert (found.user_column, found.item_column, found.timestamp_column) == ("customer", "item",
                                                                             "ts")
    odd = write_csv(tmp_path / "odd.csv", [("a", "x")], header=("who", "item"))
    with pytest.raises(LmforgeError, match="no user column .*who, item"):
        pipeline.init_config("recommendation", odd)
    with pytest.raises(LmforgeError, match="model.arch 'transformer' does not fit"):
        load_config({"task": "recommendation", "model": {"arch": "transformer"}})
    with pytest.raises(LmforgeError, match="model.arch 'sasrec' does not fit"):
        load_config({"model": {"arch": "sasrec"}})
    assert load_config({"task": "recommendation"}).model.arch == "sasrec"  # the default


def test_the_builtin_names_the_package_it_needs_when_absent(monkeypatch):
    import importlib.util

    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "recbole" else found(name, *a))
    with pytest.raises(LmforgeError, match="needs the 'recbole' package: pip install --no-deps"):
        read_interactions("builtin:ml-100k", "auto", InteractionColumns())


@pytest.mark.timeout(120)
def test_sasrec_learns_a_deterministic_next_item_far_beyond_the_baselines(sasrec_run):
    report = json.loads((sasrec_run.run_dir / "eval.json").read_text())
    assert report["n"] == 40 and report["items"] == N_ITEMS
    assert report["ndcg@10"] > 0.9 and report["hr@10"] == 1.0
    low, high = report["ndcg@10_ci95"]
    assert low <= report["ndcg@10"] <= high
    # item-kNN finds both neighbours of the last item but not which one comes next
    assert report["baselines"]["item_knn"]["ndcg@10"] < report["ndcg@10"] - 0.1
    assert report["baselines"]["popularity"]["ndcg@10"] < report["ndcg@10"] - 0.5
    data_report = json.loads((sasrec_run.run_dir / "data_report.json").read_text())
    assert data_report["users_tested"] == 40 and data_report["split_sizes"]["train"] == 240
    again = lmforge.evaluate(sasrec_run.run_dir, show=False)  # the bundle on the run's split
    assert again["ndcg@10"] == report["ndcg@10"] and again["data_check"]["users"] == 40
    with pytest.raises(LmforgeError, match="evaluate --data is not available"):
        lmforge.evaluate(sasrec_run.run_dir, data=sasrec_run.run_dir / "config.yaml")


@pytest.mark.timeout(120)
def test_predict_takes_users_and_histories_and_falls_back_for_strangers(sasrec_run, tmp_path,
                                                                         capsys):
    queries = tmp_path / "queries.txt"
    queries.write_text("u0\nhistory: i3 i4 i5\nnobody\nhistory: i99\n", encoding="utf-8")
    out = tmp_path / "recs.jsonl"
    lmforge.predict(sasrec_run.bundle_dir, queries, out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["fallback"] is None for row in rows] == [True, True, False, False]
    assert rows[1]["items"][0]["item"] == "i6"  # the cycle's next item
    assert all(row["item"] not in ("i3", "i4", "i5") for row in rows[1]["items"])  # seen
    assert "unknown user 'nobody'" in rows[2]["fallback"] and rows[3]["unknown_items"] == ["i99"]
    assert len(rows[2]["items"]) == 10
    assert "2 by popularity" in capsys.readouterr().err
    queries_table = [("u1", ""), ("", "i3 i4 i5"), ("", '["i3", "i4"]')]
    table = write_csv(tmp_path / "queries.csv", queries_table, header=("user", "history"))
    lmforge.predict(sasrec_run.bundle_dir, table, out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row.get("user") for row in rows] == ["u1", None, None]
    assert rows[1]["history"] == ["i3", "i4", "i5"] and rows[2]["history"] == ["i3", "i4"]
    from lmforge.tasks.recommendation import RECIPE

    notes = RECIPE.quickstart_notes(lmforge.load(sasrec_run.bundle_dir), sasrec_run.bundle_dir)
    assert notes[0].startswith("user u") and "/v1/recommend" in notes[1]


def test_a_history_scores_the_same_alone_or_padded_in_a_batch(sasrec_run):
    from lmforge.tasks.recommendation import score_items

    model = lmforge.load(sasrec_run.bundle_dir).model
    histories = [[3, 4, 5, 6, 7], [9], [12, 13]]
    together = score_items(model, histories)
    for row, history in enumerate(histories):
        alone = score_items(model, [history])[0]
        assert abs(together[row][1:] - alone[1:]).max() < 1e-4


@pytest.mark.timeout(120)
def test_matrix_factorization_trains_and_ranks(cycles, tmp_path):
    run = lmforge.train(tiny(cycles, arch="mf", max_steps=60, lr=2e-2), out=tmp_path / "mf",
                        show_progress=False)
    report = run.eval_report
    assert report["model"] == "mf" and 0 <= report["ndcg@10"] <= 1
    recommender = lmforge.load(run.bundle_dir)
    known = recommender.recommend(user="u1", k=5)
    assert known["fallback"] is None and len(known["items"]) == 5
    assert recommender.recommend(history=["i1", "i2"], k=3)["fallback"] is None


@pytest.mark.timeout(120)
def test_resume_after_an_interruption_gives_the_same_model(cycles, tmp_path):
    cfg = tiny(cycles, max_steps=30, eval_every=10)
    cfg["model"]["dropout"] = 0.2  # a dropout stream that resume must restore
    whole = lmforge.train(cfg, out=tmp_path / "whole", show_progress=False)
    cut = lmforge.train(cfg, out=tmp_path / "cut", show_progress=False,
                        on_eval=lambda step, _: step == 20)
    assert cut.stopped and cut.steps == 20
    resumed = lmforge.train(cfg, out=tmp_path / "cut", resume=True, show_progress=False)
    assert resumed.resumed_from == 20 and resumed.steps == 30
    a = load_file(str(whole.bundle_dir / "model.safetensors"))
    b = load_file(str(resumed.bundle_dir / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    assert resumed.eval_report["ndcg@10"] == whole.eval_report["ndcg@10"]


@pytest.mark.timeout(120)
def test_recommend_endpoint_is_keyed_metered_and_refuses_malformed_requests(sasrec_run,
                                                                            sqlite_url):
    secret = keys.create_key(open_database(sqlite_url), "shop")
    serve = settings(sasrec_run.bundle_dir, sqlite_url)
    serve = serve.model_copy(update={"models": [f"recs={sasrec_run.bundle_dir}"]})
    with app_client(serve) as client:
        def post(body, key=secret):
            return client.post("/v1/recommend", json={"model": "recs", **body},
                               headers=auth(key) if key else {})

        assert post({"user": "u0"}, key=None).status_code == 401
        reply = post({"history": ["i3", "i4", "i5"], "k": 3})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["items"][0]["item"] == "i6" and len(body["items"]) == 3
        assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
        stranger = post({"user": "nobody"}).json()
        assert "unknown user" in stranger["fallback"] and len(stranger["items"]) == 10
        assert post({"user": 7, "k": 2}).status_code == 200  # a number is an id too
        seen = post({"user": "u0", "k": 30, "exclude_seen": False}).json()["items"]
        assert len(seen) == N_ITEMS
        for bad in ({}, {"user": "u0", "history": ["i1"]}, {"user": "u0", "k": 0},
                    {"history": []}, {"user": "u0", "extra": 1}, {"history": [["i1"]]}):
            assert post(bad).status_code == 422, bad
    (usage,) = ledger.usage_summary(open_database(sqlite_url), key="shop")
    # every call is recorded; the refused ones as errors, billed nothing
    assert usage.requests == 10 and usage.errors == 6
    assert usage.prompt_tokens == 3 + 8 and usage.completion_tokens == 3 + 10 + 2 + N_ITEMS
