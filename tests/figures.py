"""Measured figures that tests report (latency, memory growth, counts): collected during the run and printed in
the terminal summary under "figures", so CI's log carries them. Tests never assert wall-clock times; these are
for reading only.

Example:
    >>> from tests.figures import report
    >>> report("memory soak", "RSS +12.3 MB over 1,500 moves")
"""
FIGURES: list = []


def report(name: str, text: str) -> None:
    FIGURES.append(f"{name}: {text}")
