"""``python -m crewflow``: the same as the ``crewflow`` command."""

from crewflow.cli import main

if __name__ == "__main__":
    main()
