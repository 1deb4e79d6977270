"""Subcommands of ``run_episode.py``; one module per command group, wired together in :mod:`fewshot.cli.main`."""
