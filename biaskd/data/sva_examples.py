"""Agreement examples and where they come from: Linzen et al.'s (2016) ``numpred`` files and full
dependency TSV (readers, download), and the synthetic grammar's sentences."""
from __future__ import annotations

import csv
import gzip
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from biaskd.data import grammar as grammar_mod
from biaskd.data.download import fetch, md5_file
from biaskd.errors import DataFormatError

LABELS = {"VBZ": 0, "VBP": 1}
LABEL_NAMES = ("VBZ", "VBP")

#: held-out pool ids are ``k * POOL_ID_STRIDE + line`` (0-based line of numpred.test.k)
POOL_ID_STRIDE = 1_000_000

LINZEN_TSV_NAME = "agr_50_mostcommon_10K.tsv.gz"
#: where Linzen's rnn_agreement README points for the full dependency set
LINZEN_TSV_URL = "https://www.dropbox.com/s/5axdu3q9jkxzjy8/agr_50_mostcommon_10K.tsv.gz?dl=1"
#: columns read_linzen_tsv needs; the release has more (see rnnagr/utils.py dependency_fields)
TSV_REQUIRED = ("sentence", "verb_pos", "verb_index", "n_intervening", "n_diff_intervening", "distance")


# -- examples -----------------------------------------------------------------------------------
@dataclass(slots=True)
class SVAExample:
    """One agreement dependency. Unknown integer metadata is −1, unknown verb forms ``""``.

    ``tokens`` is the prefix (excluding the verb); ``sentence`` the full sentence when known,
    with the verb at ``verb_index == len(tokens)``.
    """

    tokens: list[str]
    label: int
    attractors: int = -1
    n_intervening: int = -1
    distance: int = -1
    homogeneous: int = -1
    depth: int = -1
    correct_verb: str = ""
    wrong_verb: str = ""
    sentence: list[str] | None = None


def _open_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataFormatError(f"{path}: line {line}: not UTF-8 text (byte {raw[e.start]:#04x}; {e.reason})") from None
    except (gzip.BadGzipFile, EOFError) as e:
        raise DataFormatError(f"{path}: cannot decode ({e})") from e


def read_numpred(
    path: str | os.PathLike, attractors: int | None = None, homogeneous: bool | None = None
) -> list[SVAExample]:
    """Read a ``numpred`` file: one ``VBZ|VBP<TAB>prefix`` per line (prefix split on whitespace).

    ``attractors`` records a known attractor count for every line (``numpred.test.k`` has
    exactly k, with homogeneous intervention, so ``homogeneous`` then defaults to true and
    ``n_intervening`` to k). Trailing blank lines are tolerated; any other malformed line (no
    tab, unknown label, empty prefix, blank line) raises one :class:`DataFormatError` naming
    the file and the first bad line number.
    """
    path = Path(path)
    lines = _open_text(path).split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataFormatError(f"{path}: empty file, expected 'VBZ|VBP<TAB>prefix' lines")
    if homogeneous is None and attractors is not None:
        homogeneous = True
    k = -1 if attractors is None else int(attractors)
    h = -1 if homogeneous is None else int(bool(homogeneous))
    n_int = k if attractors is not None and homogeneous else -1
    out: list[SVAExample] = []
    first_bad: tuple[int, str, str] | None = None
    n_bad = 0
    for lineno, line in enumerate(lines, 1):
        label, tab, prefix = line.partition("\t")
        y = LABELS.get(label.strip())
        tokens = prefix.split()
        if not tab or y is None or not tokens:
            n_bad += 1
            if first_bad is None:
                reason = "no tab" if not tab else ("unknown label" if y is None else "empty prefix")
                first_bad = (lineno, reason, line)
            continue
        out.append(SVAExample(tokens, y, attractors=k, n_intervening=n_int, homogeneous=h))
    if first_bad is not None:
        lineno, reason, line = first_bad
        more = f" ({n_bad - 1} more malformed lines)" if n_bad > 1 else ""
        raise DataFormatError(
            f"{path}: line {lineno}: {reason}; expected 'VBZ|VBP<TAB>prefix', got {line[:80]!r}{more}"
        )
    return out


def read_linzen_tsv(path: str | os.PathLike, keep_sentence: bool = True) -> list[SVAExample]:
    """Read Linzen's full dependency TSV (``agr_50_mostcommon_10K.tsv[.gz]``).

    Columns are found by header name (required: :data:`TSV_REQUIRED`). ``verb_index`` and
    ``subj_index`` are the parser's 1-based CoNLL token indices (``collect_agreement.py``), so
    the prefix is ``sentence.split()[: verb_index - 1]`` — exactly what the original
    ``PredictVerbNumber`` feeds its models — and the verb is token ``verb_index - 1``.
    ``attractors = n_diff_intervening`` and ``homogeneous = n_intervening == n_diff_intervening``
    (nouns strictly between subject and verb, NN/NNS only). ``correct_verb`` is the ``verb``
    column when present; the release has no inflection table, so ``wrong_verb`` stays empty.

    The file (≈1.5M dependencies) is streamed and token strings are shared between examples;
    ``keep_sentence=False`` also drops the full sentences to save memory.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    out: list[SVAExample] = []
    intern: dict[str, str] = {}
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter="\t")
            header = next(reader, None)
            if header is None:
                raise DataFormatError(f"{path}: empty file, expected a header line")
            col = {name.strip(): i for i, name in enumerate(header)}
            missing = [c for c in TSV_REQUIRED if c not in col]
            if missing:
                raise DataFormatError(f"{path}: missing required columns {missing} (header has {list(col)})")
            i_sent, i_pos, i_vidx = col["sentence"], col["verb_pos"], col["verb_index"]
            i_nint, i_ndiff, i_dist = col["n_intervening"], col["n_diff_intervening"], col["distance"]
            i_verb = col.get("verb")
            for row in reader:
                lineno = reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != len(header):
                    raise DataFormatError(f"{path}: line {lineno}: {len(row)} fields, header has {len(header)}")
                y = LABELS.get(row[i_pos])
                if y is None:
                    raise DataFormatError(f"{path}: line {lineno}: verb_pos {row[i_pos]!r} is not VBZ or VBP")
                try:
                    v, n_int, n_diff, dist = (int(row[i]) for i in (i_vidx, i_nint, i_ndiff, i_dist))
                except ValueError as e:
                    raise DataFormatError(f"{path}: line {lineno}: non-integer index/count ({e})") from None
                sentence = [intern.setdefault(t, t) for t in row[i_sent].split()]
                if not 2 <= v <= len(sentence):
                    raise DataFormatError(
                        f"{path}: line {lineno}: verb_index {v} outside 2..{len(sentence)} (1-based; "
                        f"the prefix before the verb must be non-empty)"
                    )
                out.append(
                    SVAExample(
                        tokens=sentence[: v - 1], label=y, attractors=n_diff, n_intervening=n_int,
                        distance=dist, homogeneous=int(n_int == n_diff),
                        correct_verb=intern.setdefault(row[i_verb], row[i_verb]) if i_verb is not None else "",
                        sentence=sentence if keep_sentence else None,
                    )
                )
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, csv.Error) as e:
        raise DataFormatError(f"{path}: cannot read ({e})") from e
    if not out:
        raise DataFormatError(f"{path}: no data rows after the header")
    return out


def download_linzen_tsv(
    dest_dir: str | os.PathLike,
    url: str = LINZEN_TSV_URL,
    md5: str | None = None,
    opener: Callable = urllib.request.urlopen,
    filename: str = LINZEN_TSV_NAME,
) -> Path:
    """Fetch the full Linzen TSV into ``dest_dir`` and return its path.

    An existing file is kept if it matches ``md5`` (or if no ``md5`` is given). The download
    goes to a temporary file in ``dest_dir`` that is renamed into place only after the
    checksum passed, so an interrupted or corrupt download never leaves a file under the final
    name; the temporary file is removed on any failure. ``opener(url)`` must return a
    readable (binary) context manager — tests pass a fake.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / filename
    if target.exists() and (md5 is None or md5_file(target) == md5.lower()):
        return target
    return fetch(url, target, md5, opener)


def examples_from_grammar(sentences: Iterable[grammar_mod.AgreementSentence]) -> list[SVAExample]:
    return [
        SVAExample(
            tokens=list(s.prefix), label=s.label, attractors=s.attractors,
            n_intervening=s.n_intervening, distance=s.distance, homogeneous=int(s.homogeneous),
            depth=s.depth, correct_verb=s.correct_verb, wrong_verb=s.wrong_verb,
            sentence=list(s.tokens),
        )
        for s in sentences
    ]
