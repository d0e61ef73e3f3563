"""Hypothesis profiles: `ci` (default) draws the same examples on every run, so `make test` is
reproducible; `LOSSYVISION_FUZZ_PROFILE=explore` draws new ones each run (and keeps found failures in
.hypothesis/) to look for bugs the fixed draw does not reach."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("LOSSYVISION_FUZZ_PROFILE", "ci"))
