"""Doctests of the package (`pytest --doctest-modules zfwidgets`): every docstring example runs on the bundled
model. The names below are in every example's namespace; an example that cannot run offline is marked
`# doctest: +SKIP` with the reason beside it."""
import pytest


@pytest.fixture(autouse=True)
def _doctest_names(request):
    if not isinstance(request.node, pytest.DoctestItem):
        yield
        return
    import matplotlib
    matplotlib.use("Agg")
    import numpy as np
    import torch
    import torchvision
    import zfwidgets

    torch.manual_seed(0)
    ns = request.getfixturevalue("doctest_namespace")
    lens = zfwidgets.load("zfnet-fashion")
    samples = zfwidgets.samples()
    ns.update(zf=zfwidgets, zfwidgets=zfwidgets, np=np, torch=torch, torchvision=torchvision, lens=lens,
              samples=samples, images=[s.image for s in samples], labels=[s.label for s in samples],
              image=samples[36].image, img=samples[36].image, model=lens.model,
              x=lens.to_input(samples[36].image), x_test=[s.image for s in samples],
              y_test=[s.label for s in samples], fill=lens.fill_value)
    yield
    import matplotlib.pyplot as plt
    plt.close("all")


_doctest_outcomes = {}
_doctest_examples = {"run": 0, "skipped": 0}


def pytest_collection_finish(session):
    import doctest
    for item in session.items:
        if isinstance(item, pytest.DoctestItem):
            for ex in item.dtest.examples:
                _doctest_examples["skipped" if ex.options.get(doctest.SKIP) else "run"] += 1


def pytest_runtest_logreport(report):
    if report.nodeid.startswith("zfwidgets/") and (report.when == "call" or report.outcome != "passed"):
        _doctest_outcomes[report.nodeid] = report.outcome


def pytest_terminal_summary(terminalreporter):
    if _doctest_outcomes:
        counts = {k: list(_doctest_outcomes.values()).count(k) for k in ("passed", "failed", "skipped")}
        terminalreporter.write_line(
            f"doctests: {len(_doctest_outcomes)} docstrings with examples in zfwidgets: {counts['passed']} passed, "
            f"{counts['failed']} failed, {counts['skipped']} skipped; {_doctest_examples['run']} `>>>` examples run, "
            f"{_doctest_examples['skipped']} skipped explicitly (# doctest: +SKIP)")
