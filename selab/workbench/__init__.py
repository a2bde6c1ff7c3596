"""What a researcher looks at: figures, the notebooks' widgets, running a model on photos, shipped models."""
