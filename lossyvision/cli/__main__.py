"""``python -m lossyvision.cli COMMAND ...`` (what torchrun launches) is ``lossyvision COMMAND ...``."""

from lossyvision.cli import main

if __name__ == "__main__":
    main()
