"""Network definitions used by the training recipes."""
