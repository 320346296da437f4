"""Check every internal link of a built HTML site: each local href/src names an existing file, and each
#fragment an existing id in it. `python scripts/check_doc_links.py docs/_build/html`. External links
(http, https, mailto...) are not followed (no network in CI); they are counted."""
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.links = set(), []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("id", "name"):
            if a.get(key) and (key == "id" or tag == "a"):
                self.ids.add(a[key])
        for key in ("href", "src"):
            if a.get(key) is not None and not (tag == "link" and a.get("rel") in ("preconnect", "dns-prefetch")):
                self.links.append(a[key])


def main(root: Path) -> int:
    pages = {}
    for f in root.rglob("*.html"):
        p = Page()
        p.feed(f.read_text(encoding="utf-8", errors="replace"))
        pages[f.resolve()] = p
    broken, internal, external = [], 0, 0
    for f, p in sorted(pages.items()):
        for link in p.links:
            if urlparse(link).scheme or link.startswith("//"):
                external += 1
                continue
            internal += 1
            path, frag = urldefrag(link)
            path = urlparse(path).path        # without ?v=... cache busters
            target = (f.parent / unquote(path)).resolve() if path else f
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{f.relative_to(root.resolve())}: {link} (no file {target})")
            elif frag and target.suffix == ".html" and target in pages and unquote(frag) not in pages[target].ids:
                broken.append(f"{f.relative_to(root.resolve())}: {link} (no id #{frag})")
    print(f"check_doc_links: {len(pages)} pages, {internal} internal links, {external} external (not followed), "
          f"{len(broken)} broken")
    for b in broken[:50]:
        print("  broken:", b)
    if len(broken) > 50:
        print(f"  ... and {len(broken) - 50} more")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/_build/html")))
