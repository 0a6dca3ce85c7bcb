"""How far the router's input-token estimate is from an exact tokenizer count, per kind of text.

Texts are cut from what a Debian machine carries: English licence texts and design docs, Python
source, and translated manual pages (German, French, Russian, Japanese, Korean). Pieces have random
lengths from 20 to 8,000 characters. The exact count comes from a SentencePiece model; the default
is the 32,000-token Llama-2-style vocabulary that the `mistral-common` wheel ships
(`mistral_common/data/tokenizer.model.v1`).

Usage: pip install sentencepiece mistral-common
       python bench/calibrate_token_estimate.py [--tokenizer PATH] [--pieces 300]
"""
from __future__ import annotations

import argparse
import glob
import gzip
import importlib.util
import random
import re
import statistics
from pathlib import Path

from common import print_table

from melange.operator.router.request_size import estimate_text_tokens

ROOT = Path(__file__).resolve().parents[1]


def default_tokenizer() -> Path:
    spec = importlib.util.find_spec("mistral_common")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("no --tokenizer given and mistral-common is not installed (pip install mistral-common)")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "tokenizer.model.v1"


def manual_pages(language: str, limit: int = 80) -> str:
    texts = []
    for path in sorted(glob.glob(f"/usr/share/man/{language}/man*/*.gz"))[:limit]:
        try:
            source = gzip.open(path, "rt", errors="ignore").read()
        except OSError:
            continue
        lines = (re.sub(r"\\f[BIRP]|\\-|\\\(..|\\&|\\e", "", line) for line in source.splitlines()
                 if not line.startswith((".", "'")))
        texts.append("\n".join(line for line in lines if line.strip()))
    return "\n".join(texts)


def corpora() -> dict[str, str]:
    english = [Path(p).read_text(errors="ignore") for p in sorted(glob.glob("/usr/share/common-licenses/*"))]
    english += [p.read_text() for p in sorted((ROOT.parent / "shared").glob("**/*.md"))]
    code = [Path(p).read_text(errors="ignore") for p in sorted(glob.glob("/usr/lib/python3*/*.py"))[:120]]
    found = {"English prose": "\n".join(english), "Python code": "\n".join(code)}
    for language, name in (("de", "German"), ("fr", "French"), ("ru", "Russian"), ("ja", "Japanese"),
                           ("ko", "Korean")):
        found[f"{name} (man pages)"] = manual_pages(language)
    return {name: text for name, text in found.items() if len(text) > 20_000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--tokenizer", type=Path, help="SentencePiece .model file")
    parser.add_argument("--pieces", type=int, default=300, help="pieces per kind of text")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    try:
        import sentencepiece
    except ImportError:
        raise SystemExit("this benchmark needs sentencepiece: pip install sentencepiece mistral-common") from None
    processor = sentencepiece.SentencePieceProcessor(model_file=str(args.tokenizer or default_tokenizer()))
    rng = random.Random(args.seed)
    rows = []
    for name, text in corpora().items():
        errors, naive_errors, chars, tokens = [], [], 0, 0
        for _ in range(args.pieces):
            length = int(round(10 ** rng.uniform(1.3, 3.9)))
            start = rng.randrange(0, max(1, len(text) - length))
            piece = text[start:start + length]
            exact = len(processor.encode(piece))
            if exact == 0:
                continue
            chars += len(piece)
            tokens += exact
            errors.append(abs(estimate_text_tokens(piece) - exact) / exact)
            naive_errors.append(abs(len(piece) / 4 - exact) / exact)
        errors.sort()
        naive_errors.sort()
        rows.append([name, f"{chars / tokens:.2f}", f"{100 * statistics.median(errors):.0f}%",
                     f"{100 * errors[int(0.9 * len(errors))]:.0f}%", f"{100 * statistics.median(naive_errors):.0f}%",
                     f"{100 * naive_errors[int(0.9 * len(naive_errors))]:.0f}%"])
    print_table(["text", "chars/token", "median |error|", "p90 |error|", "4 chars/token: median", "p90"], rows)


if __name__ == "__main__":
    main()
