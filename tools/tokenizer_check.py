#!/usr/bin/python3
"""tokenizer_check.py - Strata's tokenizers against the `tokenizers` library
on a large text: the number of ids that differ (0 expected) and the encoding
speed of both, one thread each, in one run.

usage: PYTHONPATH=DIR /usr/bin/python3 tools/tokenizer_check.py build/strata [MB]
The text: the test text of tests/data/tokenizers/ and generated sentences in
several scripts (tools/tokenizer_data.py), about MB megabytes (default 1.2).
"""
import os
import subprocess
import sys
import tempfile
import time

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tokenizer_data  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402


def main():
    strata = sys.argv[1]
    mb = float(sys.argv[2]) if len(sys.argv) > 2 else 1.2
    data = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data",
                        "tokenizers")
    parts, size, seed = [tokenizer_data.test_text()], 0, 100
    while size < mb * 1e6:
        s = "".join(tokenizer_data.corpus(seed, 500))
        parts.append(s)
        size += len(s.encode())
        seed += 1
    text = "".join(parts)
    raw = text.encode()
    with tempfile.NamedTemporaryFile(suffix=".txt", delete=False) as f:
        f.write(raw)
        path = f.name
    print(f"text: {len(raw):,} bytes of generated text in several scripts")
    print("| tokenizer | tokens | ids that differ | Strata MB/s | tokenizers MB/s (one string; "
          "line by line) | ratio (against the faster) |")
    print("|---|---|---|---|---|---|")
    for name in ["bytelevel.json", "llama3.json", "sentencepiece.json", "metaspace.json",
                 "digits.json"]:
        tok = Tokenizer.from_file(os.path.join(data, name))
        t0 = time.perf_counter()
        want = tok.encode(text, add_special_tokens=False).ids
        lib_s = time.perf_counter() - t0
        out = subprocess.run([strata, "tokenize", "--tokenizer", os.path.join(data, name), path],
                             capture_output=True, check=True).stdout.split()
        got = [int(x) for x in out]
        differ = sum(1 for a, b in zip(got, want) if a != b) + abs(len(got) - len(want))
        count = subprocess.run([strata, "tokenize", "--count", "--tokenizer",
                                os.path.join(data, name), path], capture_output=True, check=True,
                               text=True).stdout
        st_mbs = float(count.split(", ")[-1].split()[0])
        lib_mbs = len(raw) / lib_s / 1e6
        # The library is faster on many short strings than on one long one:
        # time it line by line too (one thread: RAYON_NUM_THREADS=1).
        lines = text.splitlines(keepends=True)
        t0 = time.perf_counter()
        tok.encode_batch(lines, add_special_tokens=False)
        lines_mbs = len(raw) / (time.perf_counter() - t0) / 1e6
        best = max(lib_mbs, lines_mbs)
        print(f"| {name} | {len(want):,} | {differ} | {st_mbs:.2f} | {lib_mbs:.2f}; "
              f"{lines_mbs:.2f} | {st_mbs / best:.2f} |")
    os.unlink(path)


if __name__ == "__main__":
    main()
