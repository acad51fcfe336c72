"""``python -m pipelines.anonymize`` from the repository: the ``beam-anon`` command
(:mod:`beam_anon.cli`, where the CLI lives; this folder is not installed)."""
import sys

from beam_anon.cli import command

if __name__ == "__main__":
    sys.exit(command())
