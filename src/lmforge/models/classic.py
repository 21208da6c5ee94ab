"""The classic networks beside the Transformer: the MLP (feature tables), the CNN (images), the
RNN and the TextCNN (text). Each is a plain nn.Module that the same training loop, bundle, export
and server handle; each class stays small and readable."""

from __future__ import annotations
