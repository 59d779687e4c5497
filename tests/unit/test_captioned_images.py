"""Captioned images: the imagefolder + metadata.jsonl convention, the generated fallback, and every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pantheon.data.captioned_images import CaptionedImagesDataModule, ensure_shapes_dataset
from pantheon.train import train
from pantheon.utils.errors import UserError
from tests.conftest import SHARED_FLOWERS, requires_shared_flowers


def make_folder(root: Path, rows: list[dict], images: int = 4) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(images):
        Image.new("RGB", (40, 30), (i * 60, 100, 200)).save(root / "images" / f"{i}.png")
    (root / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


def rows(n: int = 4) -> list[dict]:
    return [{"file_name": f"images/{i}.png", "text": f"a photo of flower {i}", "split": "train" if i else "test"}
            for i in range(n)]  # fmt: skip


def datamodule(data_dir: Path, **kwargs) -> CaptionedImagesDataModule:
    dm = CaptionedImagesDataModule(data_dir=str(data_dir), resolution=16, batch_size=2, **kwargs)
    dm.setup("fit")
    return dm


def test_imagefolder_batches(tmp_path: Path) -> None:
    dm = datamodule(make_folder(tmp_path, rows()))
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert batch["pixel_values"].shape == (2, 3, 16, 16)
    assert batch["pixel_values"].min() >= -1.0 and batch["pixel_values"].max() <= 1.0
    assert all(text.startswith("a photo of flower") for text in batch["text"])
    assert len(datamodule(tmp_path, splits=["train"]).train_set) == 3


def test_generated_shapes_when_the_folder_is_absent(tmp_path: Path) -> None:
    dm = datamodule(tmp_path / "absent", synthetic_fallback=True, synthetic_dir=str(tmp_path / "shapes"))
    assert dm.source_used == "synthetic" and len(dm.train_set) == 240
    assert dm.train_set[0]["captions"] == ("a photo of a red circle",)
    first = (tmp_path / "shapes" / "images" / "00000.png").read_bytes()
    ensure_shapes_dataset(tmp_path / "again")
    assert (tmp_path / "again" / "images" / "00000.png").read_bytes() == first, "seeded: same images"


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda d: (d / "metadata.jsonl").unlink(), "metadata.jsonl is missing"),
        (
            lambda d: (d / "metadata.jsonl").write_text('{"file_name": "images/0.png"}\n'),
            'line 1 has no "text" field',
        ),
        (lambda d: (d / "metadata.jsonl").write_text("{not json\n"), "line 1 is not valid JSON"),
        (lambda d: (d / "metadata.jsonl").write_text(""), "the dataset is empty"),
        (lambda d: (d / "images" / "2.png").unlink(), "2.png: missing"),
        (lambda d: (d / "images" / "1.png").write_bytes(b"not an image"), "1.png: not a readable image"),
    ],
    ids=["no-metadata", "no-caption-column", "bad-json", "empty", "missing-image", "corrupt-image"],
)
def test_bad_inputs_fail_with_one_line(tmp_path: Path, break_it, message: str) -> None:
    folder = make_folder(tmp_path, rows())
    break_it(folder)
    with pytest.raises(UserError, match=message) as err:
        datamodule(folder)
    assert len(str(err.value).splitlines()) == 1


def test_bad_images_skipped_and_counted_when_asked(tmp_path: Path, caplog) -> None:
    folder = make_folder(tmp_path, rows(4))
    (folder / "images" / "3.png").unlink()
    (folder / "images" / "1.png").write_bytes(b"garbage")
    dm = datamodule(folder, skip_bad_images=True)
    assert len(dm.train_set) == 2
    assert "skipped 2 missing or unreadable image(s) of 4" in caplog.text


def test_image_that_breaks_after_the_check_fails_on_decode_naming_the_file(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, [])
    Image.new("RGB", (64, 64), (10, 20, 30)).save(folder / "images" / "big.jpg")
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "images/big.jpg", "text": "x"}) + "\n")
    dm = CaptionedImagesDataModule(data_dir=str(folder), resolution=16, batch_size=1)
    dm.setup()
    data = (folder / "images" / "big.jpg").read_bytes()
    (folder / "images" / "big.jpg").write_bytes(data[: len(data) // 2])  # truncated after setup's check
    with pytest.raises(UserError, match=r"big\.jpg cannot be decoded"):
        dm.train_set[0]


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        CaptionedImagesDataModule(data_dir=str(tmp_path / "absent"))


def test_a_list_of_captions_gives_one_caption_per_sample(tmp_path: Path) -> None:
    captions = [["a photo of a rose", "a red rose", "roses in a garden"]] * 4
    folder = make_folder(tmp_path, [{**row, "text": c} for row, c in zip(rows(), captions, strict=True)])
    dm = datamodule(folder)
    seen = set()
    for _ in range(10):
        batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
        assert all(isinstance(text, str) and text in captions[0] for text in batch["text"])
        seen.update(batch["text"])
    assert len(seen) > 1, "the caption is drawn per sample, not fixed"
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "images/0.png", "text": [1, 2]}) + "\n")
    with pytest.raises(
        UserError, match="line 1: the caption must be a string or a non-empty list of strings"
    ):
        datamodule(folder)


def test_random_flip_and_caption_are_drawn_in_the_main_process(tmp_path: Path) -> None:
    """Workers return the same sample for an index every time; the random parts come from the main process's
    generator after batching, which exact resume reseeds (pantheon.cluster.resume)."""
    folder = make_folder(tmp_path, [{**row, "text": ["one", "two"]} for row in rows()])
    for i in range(4):  # left half dark, right half bright: a flip shows
        Image.fromarray(
            np.repeat(np.linspace(0, 255, 40, dtype=np.uint8)[None, :, None], 30, 0).repeat(3, 2)
        ).save(folder / "images" / f"{i}.png")
    dm = CaptionedImagesDataModule(data_dir=str(folder), resolution=16, batch_size=4, num_workers=2)
    dm.setup("fit")
    assert torch.equal(dm.train_set[1]["pixel_values"], dm.train_set[1]["pixel_values"])
    raw = next(
        iter(
            torch.utils.data.DataLoader(
                dm.train_set, batch_size=4, collate_fn=dm.train_dataloader().collate_fn
            )
        )
    )
    draws = []
    for _ in range(2):
        torch.manual_seed(7)
        draws.append(dm.on_after_batch_transfer(raw, 0))
    assert (
        torch.equal(draws[0]["pixel_values"], draws[1]["pixel_values"])
        and draws[0]["text"] == draws[1]["text"]
    )
    flipped = [
        not torch.equal(a, b) for a, b in zip(draws[0]["pixel_values"], raw["pixel_values"], strict=True)
    ]
    for a, b, f in zip(draws[0]["pixel_values"], raw["pixel_values"], flipped, strict=True):
        assert torch.equal(a, b.flip(-1) if f else b)
    assert 0 < sum(flipped) < 4 or flipped != [
        not torch.equal(a, b)
        for a, b in zip(dm.on_after_batch_transfer(raw, 0)["pixel_values"], raw["pixel_values"], strict=True)
    ], "flips are drawn per image"


def test_bad_data_fails_the_train_entry_point_before_the_model_loads(
    fast_cfg, tmp_path: Path, capsys
) -> None:
    folder = make_folder(tmp_path / "flowers", rows())
    (folder / "metadata.jsonl").unlink()
    cfg = fast_cfg(
        "experiment=flowers_sd_tiny", f"data.data_dir={folder}", "model.pretrained_model=/nonexistent"
    )
    with pytest.raises(SystemExit) as exit_info:
        train(cfg)
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "metadata.jsonl is missing" in errors[0]


@requires_shared_flowers
@pytest.mark.data
def test_shared_flowers_work_as_they_are() -> None:
    dm = CaptionedImagesDataModule(
        data_dir=str(SHARED_FLOWERS), resolution=32, batch_size=4, splits=["train"]
    )
    dm.setup()
    assert len(dm.train_set) == 1020, "the official train split"
    item = dm.train_set[0]
    assert item["pixel_values"].shape == (3, 32, 32) and item["captions"][0].startswith("a photo of a")
    assert torch.isfinite(item["pixel_values"]).all()
