"""Tables (Markdown/CSV/JSON) and plots (matplotlib) from manifests and results."""
