"""Per-task pieces: model head, batching, loss, metrics and postprocessing."""
