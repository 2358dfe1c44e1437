"""Command-line entry point: ``python -m crewflow.testing.server --port 0 --latency 0.2``."""

from crewflow.testing._server import main

if __name__ == "__main__":
    main()
