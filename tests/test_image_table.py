"""Images listed in a CSV (`data.source: image_csv`): labels from a `file,labels` table (`a|b`
or JSON lists, or 0/1 columns), the task's split, and clear errors; the same table read as
evaluation data; tab-separated text files (`data.delimiter`); the bundled recipes' assets.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import requires_asset, write_png

from tftune.config import DataConfig, load_recipe
from tftune.data import load_data
from tftune.data.labelled import load_labelled
from tftune.errors import ConfigError, DataError
from tftune.tasks import Classification
from tftune.tasks.multilabel import Multilabel

REPO = Path(__file__).resolve().parents[1]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def write_table(root: Path, rows: list[dict], columns: list[str], images: int | None = None) -> Path:
    """`root/images/img_NN.png` (the first `images` rows' files; all by default) and
    `root/labels.csv` with `rows`."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(rows[:images]):
        write_png(root / row["file"], list(COLOURS.values())[i % 3], rng, size=16)
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return root / "labels.csv"


def tagged_rows(n: int = 20) -> list[dict]:
    """Rows whose labels are `a`, `b` and `c` in turns, some rows with two, one with none;
    half of them as JSON lists."""
    rows = []
    for i in range(n):
        labels = [x for x, on in (("a", i % 2 == 0), ("b", i % 3 == 0), ("c", i % 5 == 1)) if on]
        cell = ("|".join(labels) if i % 2 else str(labels).replace("'", '"')) if labels else ""
        rows.append({"file": f"images/img_{i:02d}.png", "labels": cell})
    return rows


def config(csv_path: Path, **extra) -> DataConfig:
    return DataConfig(source="image_csv", path=str(csv_path), label_column="labels", image_size=(8, 8),
                      val_fraction=0.2, test_fraction=0.2, **extra)


def test_multilabel_images_from_a_file_labels_csv(tmp_path: Path) -> None:
    rows = tagged_rows()
    splits = load_data(config(write_table(tmp_path, rows, ["file", "labels"])), seed=1, task=Multilabel())
    assert splits.class_names == ["a", "b", "c"] and splits.modality == "image"
    assert splits.sizes == {"train": 12, "val": 4, "test": 4}
    expected = {str(tmp_path / r["file"]): r for r in rows}
    seen = []
    for split in ("train", "val", "test"):
        for path, y, (image, y_ds) in zip(splits.ids[split], splits.labels[split], getattr(splits, split)):
            want = set(yaml.safe_load(expected[path]["labels"]) if expected[path]["labels"].startswith("[")
                       else expected[path]["labels"].split("|")) - {""}
            assert {n for n, v in zip(splits.class_names, y) if v == 1.0} == want
            np.testing.assert_array_equal(y_ds.numpy(), y)
            assert image.shape == (8, 8, 3) and y_ds.dtype.name == "float32"
            seen.append(path)
    assert sorted(seen) == sorted(expected)  # every image in exactly one split


def test_multilabel_images_from_zero_one_columns(tmp_path: Path) -> None:
    rows = [{"file": f"images/img_{i:02d}.png", "cat": i % 2, "dog": int(i % 3 == 0)} for i in range(10)]
    cfg = config(write_table(tmp_path, rows, ["file", "cat", "dog"]), label_columns=("cat", "dog"))
    splits = load_data(cfg, seed=0, task=Multilabel())
    assert splits.class_names == ["cat", "dog"]
    by_path = dict(zip(splits.ids["train"], splits.labels["train"]))
    for row in rows:
        path = str(tmp_path / row["file"])
        if path in by_path:
            assert list(by_path[path]) == [row["cat"], row["dog"]]


def test_single_label_images_from_a_csv(tmp_path: Path) -> None:
    rows = [{"file": f"images/img_{i:02d}.png", "labels": list(COLOURS)[i % 3]} for i in range(15)]
    splits = load_data(config(write_table(tmp_path, rows, ["file", "labels"])), seed=0, task=Classification())
    assert splits.class_names == ["blue", "green", "red"]
    assert splits.labels["train"].dtype == np.int32
    for path, y in zip(splits.ids["train"], splits.labels["train"]):
        assert splits.class_names[y] == list(COLOURS)[int(Path(path).stem[-2:]) % 3]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("missing_file", r"labels.csv lists 1 image file\(s\) that do not exist \(first: data row 20, .*img_19.png\)"),
        ("unknown_label", r"data row 2 has label\(s\) \['c'\] that are not among the labels \(a, b\)"),
        ("empty_labels", r"the label column 'labels' is empty in every row"),
        ("no_file_column", r"has no column 'file'\. Columns: path, labels\. Set data.image_column"),
        ("empty_file_cell", r"data row 4 has an empty 'file' cell"),
    ],
)
def test_clear_errors(tmp_path: Path, change: str, message: str) -> None:
    rows, columns, extra, images = tagged_rows(), ["file", "labels"], {}, None
    if change == "missing_file":
        images = 19
    elif change == "unknown_label":
        extra = {"classes": ("a", "b")}
    elif change == "empty_labels":
        rows = [{**r, "labels": ""} for r in rows]
    elif change == "no_file_column":
        columns = ["path", "labels"]
        write_table(tmp_path, rows, ["file", "labels"])
        rows = [{"path": r["file"], "labels": r["labels"]} for r in rows]
    elif change == "empty_file_cell":
        write_table(tmp_path, rows, columns)
        rows[3] = {**rows[3], "file": ""}
    if change in ("no_file_column", "empty_file_cell"):
        with open(tmp_path / "labels.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        csv_path = tmp_path / "labels.csv"
    else:
        csv_path = write_table(tmp_path, rows, columns, images)
    with pytest.raises(DataError, match=message):
        load_data(config(csv_path, **extra), seed=0, task=Multilabel())


def test_a_listed_table_as_evaluation_data(tmp_path: Path) -> None:
    csv_path = write_table(tmp_path, tagged_rows(6), ["file", "labels"])
    examples = load_labelled(csv_path, "image", ["a", "b", "c"], (8, 8), label_column="labels",
                             task=Multilabel(["a", "b", "c"]))
    assert examples.size == 6 and examples.ids[0] == str(tmp_path / "images/img_00.png")
    labels = np.stack([y.numpy() for _, y in examples.dataset])
    np.testing.assert_array_equal(labels[0], [1, 1, 0])  # row 0: ["a", "b"]
    with pytest.raises(DataError, match=r"label\(s\) \['c'\] .*--skip-unknown-labels"):
        load_labelled(csv_path, "image", ["a", "b"], (8, 8), label_column="labels", task=Multilabel(["a", "b"]))


def test_tab_separated_text_with_data_delimiter(tmp_path: Path) -> None:
    lines = ["id\tsentiment\ttext"] + [f"{i}\t{(i % 9) - 4}.5\tsnippet, number {i}, with commas" for i in range(40)]
    (tmp_path / "scores.txt").write_text("\r\n".join(lines), encoding="utf-8")
    from tftune.tasks.regression import Regression

    cfg = DataConfig(source="csv", path=str(tmp_path / "scores.txt"), delimiter="\t",
                     label_column="sentiment", val_fraction=0.2, test_fraction=0.2)
    splits = load_data(cfg, seed=0, task=Regression())
    assert sum(splits.sizes.values()) == 40
    texts = {t.numpy().decode(): float(y) for t, y in splits.train}
    assert texts["snippet, number 7, with commas"] == pytest.approx(3.5)
    with pytest.raises(ConfigError, match=r"'data.delimiter'. Expected one character"):
        load_recipe_text(tmp_path, "data: {delimiter: ', '}")


def load_recipe_text(folder: Path, text: str):
    path = folder / "r.yaml"
    path.write_text(text, encoding="utf-8")
    return load_recipe(path)


NEW_RECIPES = ["text_regression_vader_minilm", "image_multilabel_cryptopunks", "text_imbalanced_rt_minilm"]


@pytest.mark.parametrize("name", NEW_RECIPES)
def test_new_recipes_name_files_of_their_assets(name: str) -> None:
    from tftune.assets import load_manifest
    from tftune.assets.converters import CONVERTERS

    cfg = load_recipe(REPO / "recipes" / f"{name}.yaml")
    asset, _, inner = cfg.data.path.removeprefix("asset:").partition("/")
    entry = load_manifest(REPO / "assets" / "manifest.yaml").get(asset)
    made = CONVERTERS[entry.convert].outputs if entry.convert else ()
    assert inner in {f.path for f in entry.files} | set(made)
    assert cfg.task == {"text_regression_vader_minilm": "regression",
                        "image_multilabel_cryptopunks": "multilabel"}.get(name, "classification")


@pytest.mark.assets
def test_the_vader_recipe_reads_its_tab_separated_asset() -> None:
    requires_asset("vader-movie-snippets")
    from tftune.tasks.regression import Regression

    cfg = load_recipe(REPO / "recipes" / "text_regression_vader_minilm.yaml")
    splits = load_data(cfg.data, seed=cfg.train.seed, task=Regression())
    assert sum(splits.sizes.values()) == 10_605
    everything = np.concatenate(list(splits.labels.values()))
    assert everything.min() >= -4 and everything.max() <= 4


def test_a_corrupt_listed_image_is_named_or_left_out(tmp_path: Path) -> None:
    """`data.skip_bad_files` on an image table: without it the corrupt JPEG is named with the
    fix; with it the row is left out of its split and listed in `skipped`."""
    rows = [{"file": f"images/img_{i:02d}.png", "labels": "abc"[i % 3]} for i in range(15)]
    rows.append({"file": "images/broken.jpg", "labels": "a"})
    csv_path = write_table(tmp_path, rows, ["file", "labels"], images=15)
    (tmp_path / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 40)
    with pytest.raises(DataError, match=r"broken\.jpg.*--set data\.skip_bad_files=true"):
        load_data(config(csv_path), seed=0)
    splits = load_data(config(csv_path, skip_bad_files=True), seed=0)
    assert splits.skipped == [str(tmp_path / "images" / "broken.jpg")]
    assert sum(splits.sizes.values()) == 15
    for split in ("train", "val", "test"):
        assert len(splits.ids[split]) == len(splits.labels[split]) == splits.sizes[split]
        assert len(list(getattr(splits, split))) == splits.sizes[split]


def test_a_latin1_image_table(tmp_path: Path) -> None:
    rows = [{"file": f"images/img_{i:02d}.png", "labels": ["rouge", "vert", "bleu clair é"][i % 3]}
            for i in range(15)]
    csv_path = write_table(tmp_path, rows, ["file", "labels"])
    csv_path.write_bytes(csv_path.read_text(encoding="utf-8").encode("latin-1"))
    with pytest.raises(DataError, match=r"labels\.csv is not valid utf-8 text.*--set data\.encoding=latin-1"):
        load_data(config(csv_path), seed=0)
    assert "bleu clair é" in load_data(config(csv_path, encoding="latin-1"), seed=0).class_names
