"""The documentation covers the public API, says what the README says, and its link checker finds breaks."""
import importlib.util
import re
from pathlib import Path

import zfwidgets

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def test_api_reference_lists_every_public_name():
    text = (DOCS / "api.rst").read_text()
    top = re.findall(r"^\.\. auto(?:function|class):: zfwidgets\.(\w+)$", text, flags=re.M)
    assert len(top) == len(set(top)), "a name is documented twice"
    assert sorted(top) == sorted(zfwidgets.__all__), (
        f"docs/api.rst lacks {sorted(set(zfwidgets.__all__) - set(top))}, "
        f"has names outside zfwidgets.__all__: {sorted(set(top) - set(zfwidgets.__all__))}")


def test_every_public_name_has_a_docstring_with_an_example():
    missing = [n for n in zfwidgets.__all__ if ">>>" not in (getattr(zfwidgets, n).__doc__ or "")]
    assert not missing, f"no `>>>` example in the docstring of {missing}"


def test_getting_started_includes_the_readme_commands():
    page = (DOCS / "getting-started.md").read_text()
    readme = (ROOT / "README.md").read_text()
    m = re.search(r'```\{include\} \.\./README\.md\n:start-after: "(.+)"\n:end-before: "(.+)"\n```', page)
    assert m, "getting-started.md should include the README's commands, not copy them"
    start, end = m.groups()
    assert start in readme and end in readme and readme.index(start) < readme.index(end)
    included = readme[readme.index(start):readme.index(end)]
    assert "bash scripts/start" in included and "bash scripts/test" in included
    assert 'zf.load("zfnet-fashion")' in included


def test_link_checker_finds_missing_files_and_anchors(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("check_doc_links", ROOT / "scripts" / "check_doc_links.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    (tmp_path / "sub").mkdir()
    (tmp_path / "style.css").write_text("")
    (tmp_path / "index.html").write_text(
        '<link href="style.css?v=1"><a href="sub/page.html#here">ok</a><a href="https://example.org/x">ext</a>'
        '<a href="#top" id="top">self</a>')
    (tmp_path / "sub" / "page.html").write_text('<h1 id="here">x</h1><a href="../index.html">up</a>')
    assert mod.main(tmp_path) == 0
    (tmp_path / "sub" / "page.html").write_text('<a href="../missing.html">x</a><a href="../index.html#gone">y</a>')
    assert mod.main(tmp_path) == 1
    out = capsys.readouterr().out
    assert "missing.html" in out and "#gone" in out and "#here" in out and "3 broken" in out
