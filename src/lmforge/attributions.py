"""Token attributions: how much each token of a text pushed the model toward the label it
predicted. Integrated gradients (Captum) over the token embeddings of a network with gradients;
occlusion (drop a token, or a span of the text, and see the label's probability fall) for the
models without them: an ONNX session, TF-IDF, an ensemble.

An attribution is {"token", "score"}: the token as a span of the cleaned text (the special
tokens, [CLS] and the like, are left out), in text order; a positive score is evidence for the
predicted label, a negative one against it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from lmforge.tasks.classification import predict_logits, softmax

# Integrated gradients' path from the baseline (every token padding) to the text, in steps.
IG_STEPS = 32
# Occlusion spans of a text without tokens (TF-IDF reads characters): a run of letters or
# digits, or one other character, so that Chinese, which has no spaces, goes by character.
SPAN = re.compile(r"[^\W_\u3000-\u9fff\uac00-\ud7af]+|\S")


def attribution_rows(text: str, spans: list[tuple[int, int]], scores: np.ndarray) -> list[dict]:
    return [{"token": text[start:end], "score": round(float(score), 6)}
            for (start, end), score in zip(spans, scores, strict=True)]


def integrated_gradients(
    model: nn.Module, embeddings: nn.Module, ids: np.ndarray, keep: np.ndarray, pad_id: int,
    target: int,
) -> np.ndarray:
    """One score per token of `ids` (T,): the attribution to class `target`, summed over the
    embedding's dimensions. The baseline is the text with its kept (non-special) tokens made
    padding; the attention mask stays that of the text."""
    from captum.attr import LayerIntegratedGradients

    device = next(model.parameters()).device
    inputs = torch.as_tensor(ids, dtype=torch.long, device=device)[None]  # (1, T)
    baseline = inputs.clone()
    baseline[0, torch.as_tensor(keep, device=device)] = pad_id
    mask = torch.ones_like(inputs)
    was_training = model.training
    model.eval()
    try:
        ig = LayerIntegratedGradients(model, embeddings)
        scores = ig.attribute(inputs, baselines=baseline, target=target,
                              additional_forward_args=(mask,), n_steps=IG_STEPS,
                              internal_batch_size=IG_STEPS)
    finally:
        model.train(was_training)
    return scores.sum(-1)[0].detach().float().cpu().numpy()  # (T,)


def occlude_tokens(model: nn.Module, ids: np.ndarray, keep: np.ndarray, pad_id: int) -> np.ndarray:
    """One score per kept token: the probability of the label predicted for the whole text,
    less that with the token dropped."""
    variants = [ids] + [np.delete(ids, i) for i in np.flatnonzero(keep)]
    probs = softmax(predict_logits(model, variants, pad_id))
    target = probs[0].argmax()
    return probs[0, target] - probs[1:, target]


def occlude_spans(
    probabilities: Callable[[list[str]], np.ndarray], text: str
) -> tuple[list[tuple[int, int]], np.ndarray]:
    """The text's spans (SPAN) and one score per span: the probability of the label predicted
    for the whole text, less that with the span dropped."""
    spans = [match.span() for match in SPAN.finditer(text)]
    variants = [text] + [text[:start] + text[end:] for start, end in spans]
    probs = probabilities(variants)
    target = probs[0].argmax()
    return spans, probs[0, target] - probs[1:, target]


def embedding_layer(model: nn.Module) -> nn.Module | None:
    """The token embedding of lmforge's encoder or a Hugging Face model; None for a model
    without gradients (an ONNX session)."""
    from lmforge.models import EncoderClassifier, PretrainedClassifier

    if isinstance(model, EncoderClassifier):
        return model.encoder.tok_emb
    if isinstance(model, PretrainedClassifier):
        return model.hf.get_input_embeddings()
    return None
