"""The numbers the docs state about the test suite are the suite's own."""
import os
import re

from test_bad_inputs import CASES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_corpus_size_in_readme_and_guarantees_is_the_number_of_cases():
    for page in ("README.md", os.path.join("docs", "guarantees.md")):
        with open(os.path.join(ROOT, page), encoding="utf-8") as f:
            stated = re.findall(r"runs (\d+) bad inputs", f.read())
        assert stated, f"{page} no longer states the corpus size"
        assert {int(n) for n in stated} == {len(CASES)}, (
            f"{page} says {stated} bad inputs; tests/bad_cases_*.py hold {len(CASES)}: update the page")


def test_committed_results_hold_no_absolute_path_of_the_machine_that_made_them():
    machine = re.compile(r"(?<![\w.])/(work|tmp|root|home)/[\w.-]+")
    found = []
    for folder, _, files in os.walk(os.path.join(ROOT, "results")):
        for name in files:
            path = os.path.join(folder, name)
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except UnicodeDecodeError:  # a binary file (PNG): not text to read
                continue
            found += [f"{os.path.relpath(path, ROOT)}: {m.group(0)}" for m in machine.finditer(text)]
    assert not found, "absolute paths in results/ (make them relative to the repository):\n" + "\n".join(found[:20])
