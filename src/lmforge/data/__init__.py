"""The data stage: read a dataset, clean it, split it, and report what happened to every row."""

from lmforge.data.clean import clean_text
from lmforge.data.detect import detect_columns, detect_text_column
from lmforge.data.prepare import (
    PreparedData,
    prepare_classification_data,
    read_labelled,
    read_texts,
)
from lmforge.data.split import Split, order_labels

__all__ = [
    "PreparedData",
    "Split",
    "clean_text",
    "detect_columns",
    "detect_text_column",
    "order_labels",
    "prepare_classification_data",
    "read_labelled",
    "read_texts",
]
