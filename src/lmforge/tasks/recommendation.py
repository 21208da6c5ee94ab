"""Recommendation: each user's interactions in time order, split leave-last-out; SASRec (lmforge's
GPT over item ids: causal self-attention, the output tied to the item embeddings) or matrix
factorization, trained with a full softmax over the items; ranked over all items (those the user
already had excluded) beside the popularity and item-kNN baselines; a bundle loads into a
Recommender.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table as RichTable
from torch import nn

from lmforge.config import Config, RecommendationConfig, fill_train_defaults, load_config
from lmforge.data.interactions import (
    InteractionColumns,
    TimeSplit,
    leave_last_out,
    read_interactions,
)
from lmforge.data.records import Records, cell_str
from lmforge.data.sources import TABLE_FORMATS, read_bytes, resolve_format
from lmforge.data.tables import parse_table
from lmforge.errors import LmforgeError
from lmforge.evaluation.retrieval import gold_ranks, means_with_intervals
from lmforge.files import write_json_atomic
from lmforge.models import GPT, GPTConfig
from lmforge.models.factorization import MatrixFactorization, MFConfig
from lmforge.tasks.recipe import Evaluated, Log, Prepared, TrainingPlan
from lmforge.training import resolve_device, seed_everything

CATALOGUE_FILE = "catalogue.json"
WEIGHTS_FILE = "model.safetensors"
CUTOFF = 10  # hr@10, ndcg@10
HISTORY_PREFIX = "history:"  # a predict input line "history: ITEM ITEM ..." (else a user id)
SCORE_BATCH = 256  # users scored per forward pass


# Recommendation's schedule per model.arch where the config gives none. SASRec: 20 short
# epochs over each user's history windows (MovieLens-100K: 380 steps; validation NDCG@10 levels
# off by then, and the test NDCG@10 is 1.7x popularity's). MF: an example is a whole user, so
# more epochs at a higher rate (at SASRec's schedule it tests under popularity). Both in
# bench/RESULTS.md, "Recommendation".
RECOMMENDATION_TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "sasrec": {"lr": 1e-3, "batch_size": 128, "epochs": 20, "eval_every": 100,
               "warmup_ratio": 0.02},
    "mf": {"lr": 1e-2, "batch_size": 128, "epochs": 60, "eval_every": 100,
           "warmup_ratio": 0.02},
}


@dataclass
class Catalogue:
    """What a bundle knows besides its weights: the items (index i + 1 in the model; 0 is
    padding), their training popularity, and each known user's history (item indices, in time
    order) with their index in an MF model."""

    items: list[str]
    popularity: list[int]
    histories: dict[str, list[int]]
    users: list[str]  # MF's user rows, in order

    def __post_init__(self) -> None:
        self.index = {item: i + 1 for i, item in enumerate(self.items)}
        self.user_index = {user: i for i, user in enumerate(self.users)}

    def save(self, directory: Path) -> None:
        write_json_atomic(Path(directory) / CATALOGUE_FILE, {
            "items": self.items, "popularity": self.popularity, "histories": self.histories,
            "users": self.users})

    @classmethod
    def load(cls, directory: Path) -> Catalogue:
        path = Path(directory) / CATALOGUE_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            catalogue = cls(raw["items"], raw["popularity"], raw["histories"], raw["users"])
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise LmforgeError(f"{path}: not a recommendation catalogue ({error})") from None
        n = len(catalogue.items)
        if len(catalogue.popularity) != n or any(
                not 0 < i <= n for items in catalogue.histories.values() for i in items):
            raise LmforgeError(f"{path}: its popularity or histories do not fit its {n} items")
        return catalogue


# --- the models: scores of every item for a batch of users -------------------------------------


def build_recommender(arch: str, model_cfg: Any, n_items: int, n_users: int) -> nn.Module:
    if arch == "mf":
        return MatrixFactorization(MFConfig(n_users=n_users, n_items=n_items + 1,
                                            d_model=model_cfg.d_model, dropout=model_cfg.dropout))
    return GPT(GPTConfig(vocab_size=n_items + 1, max_length=model_cfg.max_length,
                         d_model=model_cfg.d_model, n_layers=model_cfg.n_layers,
                         n_heads=model_cfg.n_heads, d_ff=model_cfg.d_ff,
                         dropout=model_cfg.dropout))


def _left_padded(histories: list[list[int]], width: int | None = None) -> torch.Tensor:
    """The last `width` items (None: all) of each history, padded on the left with 0: (B, T)."""
    longest = max((len(h) for h in histories), default=1)
    length = max(1, longest if width is None else min(width, longest))
    out = torch.zeros((len(histories), length), dtype=torch.long)
    for row, history in enumerate(histories):
        kept = history[-length:]
        if kept:
            out[row, length - len(kept):] = torch.tensor(kept, dtype=torch.long)
    return out


@torch.no_grad()
def score_items(model: nn.Module, histories: list[list[int]],
                users: list[int | None] | None = None) -> np.ndarray:
    """(n, items + 1) scores of every item (column 0, padding, is -inf) after each history.
    SASRec reads the history's last max_length items; MF takes the user's own vector where
    `users` gives its index, else folds the history in."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(histories), SCORE_BATCH):
        chunk = histories[start:start + SCORE_BATCH]
        if isinstance(model, MatrixFactorization):
            ids = _left_padded(chunk).to(device)
            vectors = model.fold_in(ids)
            known = users[start:start + SCORE_BATCH] if users is not None else [None] * len(chunk)
            for row, user in enumerate(known):
                if user is not None:
                    vectors[row] = model.user_vectors[user]
            scores = model.scores(vectors)
        else:
            ids = _left_padded(chunk, model.config.max_length).to(device)
            # an empty history is one padding item: its scores are the model's prior
            scores = model(ids, key_mask=ids > 0 if bool((ids == 0).any()) else None,
                           last_only=True)[:, -1]
        scores = scores.float()
        scores[:, 0] = -math.inf
        out.append(scores.cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 1), dtype=np.float32)


def exclude(scores: np.ndarray, histories: list[list[int]]) -> np.ndarray:
    """The scores with each row's history items made -inf (never recommended again)."""
    masked = scores.copy()
    for row, history in enumerate(histories):
        masked[row, history] = -math.inf
    return masked


# --- training: examples, batches, loss --------------------------------------------------------


def sequence_windows(histories: Sequence[list[int]], width: int) -> list[np.ndarray]:
    """Each history cut, from its end, into windows of up to width + 1 items that overlap by
    one: every next-item transition is a target exactly once."""
    windows = []
    for history in histories:
        end = len(history)
        while end >= 2:
            start = max(0, end - (width + 1))
            windows.append(np.array(history[start:end], dtype=np.int64))
            end = start + 1
    return windows


def collate_windows(windows: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """Windows padded on the right with 0: inputs (B, T) and next-item targets (0: none)."""
    width = max(len(w) for w in windows) - 1
    inputs = torch.zeros((len(windows), width), dtype=torch.long)
    targets = torch.zeros((len(windows), width), dtype=torch.long)
    for row, window in enumerate(windows):
        seq = torch.from_numpy(window)
        inputs[row, : len(seq) - 1] = seq[:-1]
        targets[row, : len(seq) - 1] = seq[1:]
    return {"input_ids": inputs, "targets": targets}


def sasrec_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Full softmax over the items at every position (right padding: causal attention never
    reads it, and its targets are ignored)."""
    logits = model(batch["input_ids"])  # (B, T, items + 1)
    return F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten(),
                           ignore_index=0)


@dataclass
class UserItems(Sequence):
    """MF's examples: a user's index and their training items."""

    users: list[int]
    items: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray]:
        return self.users[i], self.items[i]


def collate_users(rows: list[tuple[int, np.ndarray]]) -> dict[str, torch.Tensor]:
    items = _left_padded([list(items) for _, items in rows])
    return {"users": torch.tensor([user for user, _ in rows], dtype=torch.long), "items": items}


def mf_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """A multinomial likelihood: the softmax over all items, at each of the user's items."""
    log_probs = F.log_softmax(model(batch["users"]).float(), dim=-1)  # (B, items + 1)
    items = batch["items"]
    picked = log_probs.gather(1, items) * (items > 0)
    return -picked.sum() / (items > 0).sum().clamp(min=1)


# --- ranking metrics and the baselines ---------------------------------------------------------


def rank_report(scores: np.ndarray, gold: np.ndarray, seed: int, rounds: int = 0
                ) -> dict[str, Any]:
    """hr@10, ndcg@10 and MRR of the gold items' ranks among all items, with 95% bootstrap
    intervals of `rounds` resamples (0: none)."""
    ranks = gold_ranks(scores, gold).astype(float)
    hit = ranks <= CUTOFF
    return means_with_intervals({
        f"hr@{CUTOFF}": hit.astype(float),
        f"ndcg@{CUTOFF}": np.where(hit, 1.0 / np.log2(ranks + 1), 0.0),
        "mrr": 1.0 / ranks,
    }, seed, rounds)


def popularity_scores(catalogue: Catalogue, n: int) -> np.ndarray:
    counts = np.array([0.0, *catalogue.popularity], dtype=np.float64)
    counts[0] = -math.inf
    return np.tile(counts, (n, 1))


def item_knn_scores(train: list[list[int]], histories: list[list[int]], n_items: int
                    ) -> np.ndarray:
    """Item-to-item co-occurrence: cosine similarity of the items' sets of training users,
    summed over each history's items."""
    from scipy import sparse

    rows = [u for u, items in enumerate(train) for _ in items]
    cols = [i for items in train for i in items]
    X = sparse.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(train), n_items + 1))
    co = (X.T @ X).tocsr().astype(np.float64)
    norms = np.sqrt(np.asarray(co.diagonal()))
    norms[norms == 0] = 1.0
    inverse = sparse.diags(1.0 / norms)
    similarity = (inverse @ co @ inverse).tolil()
    similarity.setdiag(0.0)
    similarity = similarity.tocsr()
    h_rows = [r for r, items in enumerate(histories) for _ in items]
    h_cols = [i for items in histories for i in items]
    H = sparse.csr_matrix((np.ones(len(h_cols)), (h_rows, h_cols)),
                          shape=(len(histories), n_items + 1))
    scores = np.asarray((H @ similarity).todense())
    scores[:, 0] = -math.inf
    return scores


# --- the run's data ---------------------------------------------------------------------------


@dataclass
class RecData:
    """A run's split as item indices; `users` in catalogue order (MF's rows)."""

    catalogue: Catalogue
    split: TimeSplit
    train: list[list[int]]  # every user's training items, in catalogue.users order
    tested: list[int]  # rows of users with val and test items
    val_gold: np.ndarray
    test_gold: np.ndarray


def index_split(log_histories: dict[str, list[str]], split: TimeSplit) -> RecData:
    items = sorted({i for history in log_histories.values() for i in history},
                   key=_natural_key)
    users = list(log_histories)
    index = {item: i + 1 for i, item in enumerate(items)}
    train = [[index[i] for i in split.train[u]] for u in users]
    popularity = np.bincount([i for history in train for i in history],
                             minlength=len(items) + 1)[1:]
    full = {u: [index[i] for i in log_histories[u]] for u in users}
    catalogue = Catalogue(items, [int(c) for c in popularity], full, users)
    tested = [row for row, u in enumerate(users) if u in split.test]
    val_gold = np.array([index[split.val[users[r]]] for r in tested], dtype=np.int64)
    test_gold = np.array([index[split.test[users[r]]] for r in tested], dtype=np.int64)
    return RecData(catalogue, split, train, tested, val_gold, test_gold)


def _natural_key(item: str) -> tuple[int, int | str]:
    """Numeric ids in numeric order ("2" before "10"), then the others as text."""
    return (0, int(item)) if item.isdigit() else (1, item)


def columns_of(settings: RecommendationConfig) -> InteractionColumns:
    return InteractionColumns(settings.user_column, settings.item_column,
                              settings.timestamp_column, settings.rating_column,
                              settings.min_rating)


def evaluate_split(model: nn.Module, data: RecData, which: str, seed: int,
                   baselines: bool, rounds: int = 0) -> dict[str, Any]:
    """The model (and the baselines) on the val or test items: ranked over all items, the
    items the user had before excluded. For test the history includes the val item."""
    rows = data.tested
    gold = data.test_gold if which == "test" else data.val_gold
    histories = [data.train[r] + ([int(v)] if which == "test" else [])
                 for r, v in zip(rows, data.val_gold, strict=True)]
    scores = exclude(score_items(model, histories, rows), histories)
    report = rank_report(scores, gold, seed, rounds)
    if baselines:
        n_items = len(data.catalogue.items)
        report["baselines"] = {
            "popularity": rank_report(exclude(popularity_scores(data.catalogue, len(rows)),
                                              histories), gold, seed, rounds),
            "item_knn": rank_report(exclude(item_knn_scores(data.train, histories, n_items),
                                            histories), gold, seed, rounds),
        }
    return report


# --- what a bundle loads into -----------------------------------------------------------------


class Recommender:
    """A loaded recommendation bundle: `recommend(user=... or history=[...], k)`."""

    def __init__(self, model: nn.Module, catalogue: Catalogue, meta: dict[str, Any]) -> None:
        self.model, self.catalogue, self.meta = model.eval(), catalogue, meta

    def recommend(self, user: str | None = None, history: list[str] | None = None,
                  k: int = CUTOFF, exclude_seen: bool = True) -> dict[str, Any]:
        """The top k items for a known user (their whole history), or after a history of
        item ids; an unknown user, or a history of unknown items only, gets the most popular
        items and a `fallback` saying why."""
        return self.recommend_many([(user, history)], k, exclude_seen)[0]

    def recommend_many(self, queries: list[tuple[str | None, list[str] | None]], k: int,
                       exclude_seen: bool = True) -> list[dict[str, Any]]:
        catalogue = self.catalogue
        out: list[dict[str, Any]] = [{} for _ in queries]
        scored, histories, users = [], [], []
        for n, (user, history) in enumerate(queries):
            row: dict[str, Any] = {"user": user} if history is None else {"history": history}
            out[n] = row
            if history is None:
                if user not in catalogue.histories:
                    row["fallback"] = f"unknown user '{user}': the most popular items"
                    continue
                known, mf_row = catalogue.histories[user], catalogue.user_index.get(user)
            else:
                known = [catalogue.index[i] for i in history if i in catalogue.index]
                unknown = [i for i in history if i not in catalogue.index]
                if unknown:
                    row["unknown_items"] = unknown[:20]
                if not known:
                    row["fallback"] = "no known item in the history: the most popular items"
                    continue
                mf_row = None
            scored.append(n)
            histories.append(known)
            users.append(mf_row)
        popular = popularity_scores(catalogue, 1)[0]
        model_scores = score_items(self.model, histories, users) if scored else None
        chosen = dict(zip(scored, range(len(scored)), strict=True))
        for n, row in enumerate(out):
            if n in chosen:
                logits = model_scores[chosen[n]]
                scores = np.exp(logits - logits.max())
                scores /= scores.sum()  # a probability over the items
                seen = histories[chosen[n]]
            else:
                scores = popular / max(1, sum(catalogue.popularity))
                seen = ([catalogue.index[i] for i in row.get("history", [])
                         if i in catalogue.index])
            if exclude_seen:
                scores = scores.copy()
                scores[seen] = -math.inf
            top = [int(i) for i in np.argsort(-scores, kind="stable")[:k] if i > 0
                   and np.isfinite(scores[i])]
            row["items"] = [{"item": catalogue.items[i - 1], "score": round(float(scores[i]), 6)}
                            for i in top]
            row.setdefault("fallback", None)
        return out

    def predict(self, queries: list[str], k: int = CUTOFF) -> list[dict[str, Any]]:
        """One row per query: a user id, or "history: ITEM ITEM ..." (spaces or commas)."""
        return self.recommend_many([parse_query(q) for q in queries], k)


def parse_query(text: str) -> tuple[str | None, list[str] | None]:
    """(user, None) or (None, history) of a predict input line."""
    text = text.strip()
    if text.lower().startswith(HISTORY_PREFIX):
        items = text[len(HISTORY_PREFIX):].replace(",", " ").split()
        return None, items
    return text, None


# --- the recipe -------------------------------------------------------------------------------


class RecommendationTask:
    name = "recommendation"
    val_metrics = (f"ndcg@{CUTOFF}", f"hr@{CUTOFF}", "mrr")
    runs_with = "predict"
    quickstart_run = "quickstart-recommendation"
    report_kind = "metrics"

    def configure(self, cfg: Config) -> None:
        """The schedule of the model named (RECOMMENDATION_TRAIN_DEFAULTS) where none given."""
        fill_train_defaults(cfg.train, RECOMMENDATION_TRAIN_DEFAULTS[cfg.model.arch])

    def starter_config(self, data: str) -> Config:
        return load_config({"task": self.name, "data": {"path": data},
                            "recommendation": detect_interaction_columns(data)})

    def quickstart_config(self, fast: bool) -> Config:
        """MovieLens-100K (from the installed recbole) at the task's defaults."""
        train = {"epochs": 8} if fast else {}
        return load_config({"task": self.name, "data": {"path": "builtin:ml-100k"},
                            "train": train})

    def prepare(self, cfg: Config, run_dir: Path, resume: bool, log: Log) -> Prepared:
        settings = cfg.recommendation
        log_ = read_interactions(cfg.data.path, cfg.data.format, columns_of(settings))
        split = leave_last_out(log_.histories, settings.min_interactions)
        data = index_split(log_.histories, split)
        if not data.tested:
            raise LmforgeError(f"{cfg.data.path}: no user has {settings.min_interactions} or "
                               "more interactions, so nothing can be validated or tested "
                               "(recommendation.min_interactions)")
        report = log_.report | {
            "users_tested": len(data.tested), "users_train_only": split.train_only_users,
            "split": "leave-last-out by time: each user's last interaction is test, the one "
                     "before it validation",
            "split_sizes": {"train": sum(len(t) for t in data.train),
                            "val": len(data.tested), "test": len(data.tested)},
        }
        log(f"{report['rows_kept']} interactions of {report['users']} users on "
            f"{report['items']} items; {len(data.tested)} users validated and tested, "
            f"{split.train_only_users} with fewer than {settings.min_interactions} in training "
            "only")
        texts = {
            "train": [f"{u}\t{i}" for u, items in split.train.items() for i in items],
            "val": [f"{u}\t{i}" for u, i in split.val.items()],
            "test": [f"{u}\t{i}" for u, i in split.test.items()],
        }
        return Prepared(cfg, log_.data_hash, data.catalogue, texts, report, {"data": data})

    def build_model(self, run: Prepared, run_dir: Path, resume: bool, show_progress: bool,
                    log: Log) -> nn.Module:
        cfg, catalogue = run.cfg, run.tokenizer
        seed_everything(cfg.train.seed)
        return build_recommender(cfg.model.arch, cfg.model, len(catalogue.items),
                                 len(catalogue.users))

    def training(self, run: Prepared, model: nn.Module) -> TrainingPlan:
        data, cfg = run.parts["data"], run.cfg
        seed = cfg.data.split.seed
        if isinstance(model, MatrixFactorization):
            rows = [r for r, items in enumerate(data.train) if items]
            examples: Sequence = UserItems(rows, [np.array(data.train[r]) for r in rows])
            collate: Callable = collate_users
            loss: Callable = mf_loss
            lengths = np.array([len(data.train[r]) for r in rows])
        else:
            examples = sequence_windows(data.train, cfg.model.max_length)
            collate, loss = collate_windows, sasrec_loss
            lengths = np.array([len(w) for w in examples])
        if not len(examples):
            raise LmforgeError(f"{cfg.data.path}: no user has two training interactions to "
                               "learn a next item from")

        def val_metrics(model: nn.Module) -> dict[str, float]:
            report = evaluate_split(model, data, "val", seed, baselines=False)
            return {name: report[name] for name in self.val_metrics}

        return TrainingPlan(examples, collate, loss, val_metrics, "max", lengths)

    def test(self, run: Prepared, model: nn.Module) -> Evaluated:
        data, cfg = run.parts["data"], run.cfg
        report = {"model": cfg.model.arch, "items": len(data.catalogue.items),
                  "ranked_over": "all items, the user's earlier items excluded",
                  **evaluate_split(model, data, "test", cfg.data.split.seed,
                                   cfg.eval.baselines, cfg.eval.bootstrap)}
        return Evaluated(report)

    def refold(self, run: Prepared, parts: dict[str, Any]) -> Prepared:
        raise LmforgeError("cross-validation is not supported for task recommendation (its "
                           "split is by time: each user's last interactions)")

    def summary(self, report: dict[str, Any]) -> dict[str, Any]:
        return {key: report[key] for key in ("n", f"hr@{CUTOFF}", f"ndcg@{CUTOFF}", "mrr")}

    def bundle_meta(self, run: Prepared, model: nn.Module, run_dir: Path | None
                    ) -> dict[str, Any]:
        cfg = run.cfg
        meta: dict[str, Any] = {
            "task": self.name, "arch": cfg.model.arch, "architecture": model.config.to_dict(),
            "text_column": cfg.recommendation.user_column, "max_length": cfg.model.max_length,
            "items": len(run.tokenizer.items)}
        if run_dir is not None:
            meta["run"] = {"dir": str(run_dir.resolve()), "data": cfg.data.path,
                           "data_hash": run.data_hash}
        return meta

    def check_bundle(self, bundle_dir: Path, meta: dict[str, Any]) -> nn.Module:
        """The bundle's model, built but without its weights, once its catalogue, its
        architecture and its weights file (the header) are checked."""
        from safetensors import SafetensorError, safe_open

        catalogue = Catalogue.load(bundle_dir)
        arch, architecture = meta.get("arch"), meta.get("architecture")
        where = Path(bundle_dir) / "lmforge.json"
        if arch not in ("sasrec", "mf") or not isinstance(architecture, dict):
            raise LmforgeError(f"{where}: 'arch' must be sasrec or mf, with its 'architecture'")
        try:
            model = (MatrixFactorization(MFConfig(**architecture)) if arch == "mf"
                     else GPT(GPTConfig(**architecture)))
        except (TypeError, ValueError) as error:
            raise LmforgeError(f"{where}: 'architecture' does not describe a model "
                               f"({error})") from None
        items = model.config.n_items if arch == "mf" else model.config.vocab_size
        if items != len(catalogue.items) + 1:
            raise LmforgeError(f"{bundle_dir}: the model scores {items - 1} items but "
                               f"{CATALOGUE_FILE} lists {len(catalogue.items)}")
        weights = Path(bundle_dir) / WEIGHTS_FILE
        try:
            with safe_open(str(weights), framework="pt"):
                pass
        except (OSError, SafetensorError) as error:
            raise LmforgeError(f"{weights}: not a readable safetensors file ({error})") from None
        return model

    def load(self, bundle_dir: Path, meta: dict[str, Any], device: str) -> Recommender:
        from safetensors.torch import load_model

        model = self.check_bundle(bundle_dir, meta)
        try:
            load_model(model, str(Path(bundle_dir) / WEIGHTS_FILE))
        except RuntimeError as error:  # a tensor missing, unexpected, or of another shape
            raise LmforgeError(f"{Path(bundle_dir) / WEIGHTS_FILE}: its tensors do not fit the "
                               f"architecture ({error})") from None
        return Recommender(model.to(resolve_device(device)), Catalogue.load(bundle_dir), meta)

    def evaluate(self, predictor: Recommender, bundle_dir: Path, run_dir: Path | None,
                 data: str | None) -> dict[str, Any]:
        if data is not None:
            raise LmforgeError("evaluate --data is not available for task recommendation; "
                               "`lmforge evaluate RUN` scores the run's own test items")
        if run_dir is None:
            raise LmforgeError(f"{bundle_dir} is outside its run directory; a recommender is "
                               "evaluated on its run's test items")
        cfg = load_config(run_dir / "config.yaml")
        run = self.prepare(cfg, run_dir, False, lambda _: None)
        if run.data_hash != predictor.meta.get("run", {}).get("data_hash"):
            raise LmforgeError(f"{cfg.data.path} changed since the run was trained; its test "
                               "items are no longer the ones it was split with")
        report = self.test(run, predictor.model).report
        return report | {"data_check": {"source": cfg.data.path, "users": report["n"]}}

    def predict(self, predictor: Recommender, texts: list[str]) -> tuple[list[dict], str]:
        rows = predictor.predict(texts)
        fallback = sum(row["fallback"] is not None for row in rows)
        return rows, (f"{len(rows)} queries: {len(rows) - fallback} recommended by the model, "
                      f"{fallback} by popularity")

    def read_inputs(self, predictor: Recommender, path: str) -> list[str]:
        """`lmforge predict --input`: a .txt file (a user id, or "history: ITEM ITEM ..." per
        line) or a table with a user column (the bundle's) or a history column."""
        return read_queries(path, predictor.meta["text_column"])

    def render(self, report: dict[str, Any], console: Console, title: str) -> None:
        table = RichTable(title=f"{title}: {report['n']} users, ranked over all "
                                f"{report['items']} items")
        names = ("", f"hr@{CUTOFF}", f"ndcg@{CUTOFF}", "MRR")
        for column in names:
            table.add_column(column)
        rows = [(report["model"], report), *report.get("baselines", {}).items()]
        for name, figures in rows:
            table.add_row(name, *(_cell(figures, key)
                                  for key in (f"hr@{CUTOFF}", f"ndcg@{CUTOFF}", "mrr")))
        console.print(table)

    def quickstart_notes(self, predictor: Any, bundle_dir: Path) -> list[str]:
        user = next(iter(predictor.catalogue.histories), "1")
        top = predictor.recommend(user=user, k=5)["items"]
        return [f"user {user}'s top 5: {', '.join(row['item'] for row in top)}",
                f"recommend: `echo {user} | lmforge predict {bundle_dir} --input -` or "
                f"`lmforge serve {bundle_dir}` (POST /v1/recommend)"]


def _cell(row: dict[str, Any], key: str) -> str:
    interval = row.get(f"{key}_ci95")
    return f"{row[key]:.4f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def read_queries(path: str, user_column: str) -> list[str]:
    """Predict inputs: lines of a .txt file ('-': stdin), or a table's user column (a user
    per row) or `history` column (item ids separated by spaces, or a JSON list)."""
    import sys

    if path == "-":
        return [line.strip() for line in sys.stdin if line.strip()]
    fmt = resolve_format(path)
    data = read_bytes(path)
    if fmt == "txt":
        return [line.strip() for line in data.decode("utf-8", errors="replace").splitlines()
                if line.strip()]
    if fmt not in TABLE_FORMATS:
        raise LmforgeError(f"{path}: give a .txt file (a user id or 'history: ITEM ...' per "
                           "line) or a table (csv, tsv, jsonl, parquet)")
    table = parse_table(path, fmt, data, Records(source=path, format=fmt))
    if user_column not in table.columns and "history" not in table.columns:
        raise LmforgeError(f"{path}: no '{user_column}' or 'history' column (columns: "
                           f"{', '.join(table.columns)})")
    queries = []
    for row_id, cells in table.rows:
        history = cells.get("history")
        if isinstance(history, str) and history.strip().startswith("["):
            try:  # a JSON list written into a csv cell
                history = json.loads(history)
            except ValueError:
                raise LmforgeError(f"{path} row {row_id}: the history {history!r} is not a "
                                   "JSON list; write item ids separated by spaces") from None
        if isinstance(history, list):
            queries.append(HISTORY_PREFIX + " ".join(str(i) for i in history))
        elif cell_str(history) is not None and cell_str(history).strip():
            queries.append(HISTORY_PREFIX + cell_str(history))
        elif cell_str(cells.get(user_column)) is not None:
            queries.append(cell_str(cells.get(user_column)).strip())
        else:
            raise LmforgeError(f"{path} row {row_id}: neither a user nor a history")
    return queries


USER_NAMES = ("user", "user_id", "userid", "uid", "customer", "customer_id", "用户")
ITEM_NAMES = ("item", "item_id", "itemid", "iid", "product", "product_id", "movie", "movieid",
              "物品", "商品")
TIME_NAMES = ("timestamp", "time", "ts", "date", "datetime", "时间")  # optional


def detect_interaction_columns(path: str) -> dict[str, str]:
    """The user, item and (if any) timestamp columns of an interactions table, by their
    names; a missing user or item column is an error naming the columns there are."""
    if path.startswith("builtin:"):
        return {}
    fmt = resolve_format(path)
    if fmt not in TABLE_FORMATS:
        raise LmforgeError(f"{path}: interactions must be a table (csv, tsv, jsonl, parquet)")
    table = parse_table(path, fmt, read_bytes(path), Records(source=path, format=fmt))
    lowered = {column.strip().lower(): column for column in table.columns}
    found = {}
    for key, names in (("user_column", USER_NAMES), ("item_column", ITEM_NAMES),
                       ("timestamp_column", TIME_NAMES)):
        column = next((lowered[n] for n in names if n in lowered), None)
        if column is None and key != "timestamp_column":
            raise LmforgeError(f"{path}: no {key.split('_')[0]} column (columns: "
                               f"{', '.join(table.columns)}); set recommendation.{key}")
        if column is not None:
            found[key] = column
    return found


RECIPE = RecommendationTask()
