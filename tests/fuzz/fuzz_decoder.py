"""Coverage-guided fuzzing of the MQTT decoder with atheris (libFuzzer).

    python tests/fuzz/fuzz_decoder.py tests/fuzz/corpus -max_total_time=3600

Each input goes to ``tests.fuzz.decoder_check.check`` (see its docstring for
the input layout and what fails). A corpus directory that is missing or
empty is first filled with the seed corpus (``decoder_check.seed_inputs``);
libFuzzer then adds the inputs that reach new code to it. A crash is written
to ``crash-<sha1>`` (``-artifact_prefix=DIR/`` puts it elsewhere); run the
script with that file as its only argument to replay it.
"""

from __future__ import annotations

import os
import sys

import atheris

# Run from the checkout this file is in, whatever else is installed.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

with atheris.instrument_imports(include=["shardmq"]):
    from shardmq.protocol import codec  # noqa: F401  (instrumented before check imports it)
    from tests.fuzz.decoder_check import check, write_corpus


def _listing(path: str) -> list[str]:
    return os.listdir(path) if os.path.isdir(path) else []


def main() -> None:
    for arg in sys.argv[1:]:
        # a corpus directory to create or fill; files given are inputs to replay
        if not arg.startswith("-") and not os.path.isfile(arg) and not _listing(arg):
            print(f"fuzz_decoder: wrote {write_corpus(arg)} seeds to {arg}", file=sys.stderr)
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
