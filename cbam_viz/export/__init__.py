"""Batch export of both models' heatmaps for files, folders or globs, and the merge of sharded runs' manifests."""
