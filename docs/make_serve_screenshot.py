"""Make docs/images/serve-page.png, the README's picture of `lookalike serve`.

    python docs/make_serve_screenshot.py                      # digits: export, train briefly, index (offline)
    python docs/make_serve_screenshot.py --index my.index --query photo.jpg

Without --index it exports scikit-learn's bundled digits (offline) into a temporary folder, trains the
default model for a few epochs, and indexes them. Then it serves the index with uvicorn on a free
127.0.0.1 port, opens the page in headless Chromium (Debian's `chromium`, driven by Playwright),
uploads the query picture and saves a screenshot of the results. Needs the test extra
(`pip install -e ".[test]"`) and `apt-get install chromium`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


def build_digits_index(work: Path, epochs: int, per_class: int) -> tuple[Path, Path]:
    """Export digits, keep one '3' out of the index as the query, train, index."""
    from lookalike.datasets import export_dataset
    from lookalike.search import Index
    from lookalike.training import train

    images = work / "digits"
    export_dataset("digits", images, split="train", limit=per_class + 1, download=False)
    query = work / "query-3.png"
    shutil.move(sorted((images / "3").glob("*.png"))[-1], query)
    print(f"training the default model on {images} for {epochs} epochs ...", flush=True)
    model = train(images, work / "model", epochs=epochs, seed=0)
    Index.build(images, model, work / "index", num_workers=0)
    return work / "index", query


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, help="an existing index (default: build one from digits)")
    ap.add_argument("--query", type=Path, help="picture to upload (default: a test-split digit)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "serve-page.png")
    ap.add_argument("--epochs", type=int, default=8, help="training epochs for the digits model")
    ap.add_argument("--per-class", type=int, default=120, help="digits per class in the index")
    ap.add_argument("--width", type=int, default=1200)
    ap.add_argument("--height", type=int, default=760)
    ap.add_argument("--k", type=int, default=12)
    args = ap.parse_args(argv)

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("error: no chromium on PATH (apt-get install chromium)", file=sys.stderr)
        return 1
    from playwright.sync_api import expect, sync_playwright

    from lookalike.server import create_app
    from lookalike.server.background import serve_in_background

    with tempfile.TemporaryDirectory(prefix="lookalike-shot-") as tmp:
        work = Path(tmp)
        if args.index is None:
            index_dir, query = build_digits_index(work, args.epochs, args.per_class)
        else:
            index_dir = args.index
            if args.query is None:
                print("error: --index needs --query", file=sys.stderr)
                return 1
            query = args.query
        query = args.query or query
        app = create_app(index_dir, cache_dir=work / "thumbs", default_k=args.k)
        with serve_in_background(app) as url, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=LAUNCH_ARGS)
            try:
                page = browser.new_page(viewport={"width": args.width, "height": args.height})
                page.goto(url + "/")
                expect(page.locator("#status")).to_contain_text("images")
                page.set_input_files("#file", str(query))
                expect(page.locator("#hits li")).to_have_count(args.k)
                page.wait_for_function(
                    "() => [...document.querySelectorAll('#hits img')].every(i => i.complete && i.naturalWidth > 0)"
                )
                page.mouse.move(5, args.height - 5)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out))
            finally:
                browser.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
