"""``python -m lossyvision COMMAND ...`` is ``lossyvision COMMAND ...``."""

from lossyvision.cli import main

if __name__ == "__main__":
    main()
