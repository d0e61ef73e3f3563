"""Tables (Markdown/CSV/JSON), Bjøntegaard deltas, CompressAI-format curves and figures from manifests and results."""
