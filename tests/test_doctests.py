"""The examples in the docstrings of ``fewshot`` run as written (doctest)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import fewshot

MODULES = sorted(m.name for m in pkgutil.walk_packages(fewshot.__path__, "fewshot.") if not m.name.endswith("__main__"))


def test_the_documented_modules_are_found():
    assert {"fewshot.norms.flow", "fewshot.norms.base", "fewshot.learners.maml", "fewshot.registry"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name, globs=vars(module).copy()):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples of {name} failed (see above)"
