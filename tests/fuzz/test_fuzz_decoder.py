"""The decoder fuzzer: its seeds pass, and a short coverage-guided run finds nothing.

The atheris run lasts ``SHARDMQ_FUZZ_DECODER_SECONDS`` (20 by default) from
a fresh seed corpus in a temporary directory; any crash, timeout or
out-of-memory input libFuzzer writes fails the test, with the input's bytes
in the message. ``tests/fuzz/README.md`` says how to run it for longer.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.decoder_check import check, seed_inputs

FUZZER = Path(__file__).with_name("fuzz_decoder.py")
SECONDS = int(os.environ.get("SHARDMQ_FUZZ_DECODER_SECONDS", "20"))


@pytest.mark.parametrize("name", sorted(seed_inputs()))
def test_seed_passes_the_check(name: str) -> None:
    check(seed_inputs()[name])


@pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None,
    reason="atheris is not installed (its wheels are for Linux x86_64 only)",
)
@pytest.mark.timeout(SECONDS + 120)
def test_decoder_fuzzer_finds_nothing(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    proc = subprocess.run(
        [
            sys.executable,
            str(FUZZER),
            str(corpus),
            f"-max_total_time={SECONDS}",
            "-timeout=10",  # one input taking 10 s is a hang
            "-rss_limit_mb=1024",
            "-max_len=4096",
            f"-artifact_prefix={tmp_path}/",
            "-print_final_stats=1",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=SECONDS + 90,
    )
    found = sorted(p for p in tmp_path.iterdir() if p.is_file())
    report = "\n".join(f"{p.name}: {p.read_bytes().hex()}" for p in found)
    assert proc.returncode == 0 and not found, (
        f"fuzzer exit status {proc.returncode}; inputs found:\n{report}\n"
        f"replay one with: python {FUZZER} <file>\n{proc.stderr[-4000:]}"
    )
    done = re.search(r"Done (\d+) runs in (\d+) second", proc.stderr)
    assert done is not None, proc.stderr[-4000:]
    runs = int(done.group(1))
    # The seeds alone are 48 runs: more means it fuzzed, not just replayed.
    assert runs > len(seed_inputs()), proc.stderr[-4000:]
    print(f"decoder fuzzer: {runs} runs in {done.group(2)} s, corpus {len(os.listdir(corpus))}")
