"""Reliability: bad config values through the real CLI, and bad OmniMedVQA records / images.

Every bad value must end the run with one clear line naming the key (exit status 2, no traceback from deep
inside a library); every bad record must be loaded correctly or counted as a skip with its reason — never
dropped silently, never a crash later inside a training step.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import ROOT
from PIL import Image

from medgr2.data.collate import to_rgb
from medgr2.data.omnimedvqa import load_omnimedvqa, parse_problem
from medgr2.data.schema import to_dataset
from medgr2.data.stats import dataset_stats, format_stats
from medgr2.generation._util import to_pil

# ------------------------------------------------------------------------------------ the command line


def train_py(tmp_path: Path, *args: str, full_error: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "MEDGR2_ROOT": str(tmp_path), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    if full_error:
        env["HYDRA_FULL_ERROR"] = "1"
    cmd = [sys.executable, str(ROOT / "train.py"), "logger=none", "print_config=false", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def _pool(path: Path, n: int = 6, score: bool = True) -> Path:
    cols = {"id": [f"c{i}" for i in range(n)], "question": [f"q{i}" for i in range(n)], "image": [None] * n}
    if score:
        cols["score"] = [float(i) for i in range(n)]
    datasets.Dataset.from_dict(cols).save_to_disk(str(path))
    return path


BAD_VALUES = [
    # (overrides, what the last line must say)
    (["select=topk", "k=-1"], "k must be a positive integer, got k=-1"),
    (["select=threshold", "tau=11"], "tau=11 is outside the reward scale [-6, 10]"),
    (["select=threshold", "tau=-7"], "tau=-7 is outside the reward scale [-6, 10]"),
    # The loop's pool holds at most n_sources x samples_per_source candidates: caught before generating.
    (["select=topk", "k=5000", "stage.generate.n_sources=40"],
     "k=5000 is larger than the at most 40 candidates an iteration generates"),
    (["stage=select", "select=topk", "k=7", "stage.pool={pool}"], "k=7 is larger than the pool (6 candidates)"),
    (["source=PET-CT"], "source=PET-CT (source_axis=modality): unknown modality string 'PET-CT'"),
    (["stage=inspect", "data=omnimedvqa", "data.root={tmp}/no/such/folder"],
     "data.root={tmp}/no/such/folder: OmniMedVQA root does not exist"),
    (["stage=inspect", "data=omnimedvqa", "data.root={tmp}"], "data.root={tmp}: no OmniMedVQA data under"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_VALUES, ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_a_bad_config_value_ends_with_one_line_naming_the_key(tmp_path, overrides, message):
    pool = _pool(tmp_path / "pool")
    fill = {"pool": pool, "tmp": tmp_path}
    proc = train_py(tmp_path, *(o.format(**fill) for o in overrides))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message.format(**fill) in last, out[-3000:]
    assert "Traceback" not in out


def test_an_error_raised_inside_a_stage_is_one_line_too(tmp_path):
    pool = _pool(tmp_path / "unscored", score=False)
    proc = train_py(tmp_path, "stage=select", "select=topk", "k=2", f"stage.pool={pool}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: select=topk ranks by reward, but the pool has no 'score' column")
    assert "Traceback" not in proc.stdout + proc.stderr


def test_hydra_full_error_keeps_the_traceback(tmp_path):
    proc = train_py(tmp_path, "select=threshold", "tau=11", full_error=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ConfigError: select=threshold" in proc.stderr


@pytest.mark.parametrize(("override", "message"), [
    ("stage=nope", "Could not find 'stage/nope'"),
    ("nosuchkey=3", "Key 'nosuchkey' is not in struct"),
    ("stage.max_stepz=3", "Key 'max_stepz' not in 'SFTConfig'"),  # the typed stage node names its schema
])
def test_an_unknown_stage_or_key_is_refused_by_hydra_with_the_name_and_no_traceback(tmp_path, override, message):
    proc = train_py(tmp_path, "stage=sft" if override.startswith("stage.") else "print_config=false", override)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and message in out and "Traceback" not in out, out[-2000:]


def test_the_preflight_merge_of_k_and_tau_matches_the_select_stage(make_cfg):
    from medgr2.pipeline.select import selection_settings
    from medgr2.utils.cli import selection_from_config

    for over in ([], ["select=topk", "k=12"], ["tau=3.5"], ["select=randk", "allow_overlap=true"]):
        cfg = make_cfg(*over)
        mine = selection_from_config(cfg)
        theirs = selection_settings(cfg)
        assert {k: theirs[k] for k in mine} == mine


# --------------------------------------------------------------------------------- OmniMedVQA records


def _save(img: Image.Image, path: Path, fmt: str = "PNG") -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    img.save(buf, fmt)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def _bomb_png(path: Path, side: int = 40_000) -> None:
    """A valid PNG header claiming side x side pixels (PIL refuses it as a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def _item(qid: str, image: str, *, question: str = "Is there a lesion?", options=("Yes", "No"), gt: str = "Yes",
          **extra) -> dict:
    item = {"dataset": "Odd", "question_id": qid, "question_type": "Disease Diagnosis", "question": question,
            "gt_answer": gt, "image_path": image, "modality_type": "CT"}
    item.update({f"option_{'ABCDEFGH'[k]}": o for k, o in enumerate(options)})
    item.update(extra)
    return item


@pytest.fixture(scope="module")
def odd_tree(tmp_path_factory) -> Path:
    """A raw-layout tree of unusual but valid images, broken images and odd records."""
    root = tmp_path_factory.mktemp("odd_omni")
    img = root / "Images" / "Odd"
    rng = np.random.default_rng(0)
    rgb = Image.fromarray((rng.random((40, 48, 3)) * 255).astype("uint8"))
    _save(rgb.convert("L"), img / "gray.png")
    _save(rgb.convert("RGBA"), img / "rgba.png")
    _save(rgb.convert("P"), img / "palette.png")
    _save(Image.fromarray((np.arange(40 * 48).reshape(40, 48) * 30).astype(np.uint16)), img / "deep16.png")
    jpeg = _save(rgb, img / "good.jpg", "JPEG")
    (img / "trailing.jpg").write_bytes(jpeg + b"\x00\x00junk after the end-of-image marker")
    (img / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    png = _save(rgb, img / "whole.png")
    (img / "truncated.png").write_bytes(png[: len(png) // 2])
    (img / "empty.png").write_bytes(b"")
    _bomb_png(img / "bomb.png")

    qa = root / "QA_information" / "Open-access"
    qa.mkdir(parents=True)
    good = [_item(f"img-{n}", f"Images/Odd/{n}") for n in
            ("gray.png", "rgba.png", "palette.png", "deep16.png", "good.jpg", "trailing.jpg", "whole.png")]
    bad_images = [_item(f"img-{n}", f"Images/Odd/{n}") for n in
                  ("truncated.jpg", "truncated.png", "empty.png", "bomb.png")]
    records = [
        _item("q-empty", "Images/Odd/gray.png", question=""),
        _item("q-blank", "Images/Odd/gray.png", question="   \n "),
        _item("q-one-option", "Images/Odd/gray.png", options=("Yes",)),
        _item("q-five-options", "Images/Odd/gray.png", options=("1", "2", "3", "4", "5"), gt="1"),
        _item("q-five-options-e", "Images/Odd/gray.png", options=("1", "2", "3", "4", "5"), gt="5"),
        _item("q-huge", "Images/Odd/gray.png", question="Is there a lesion? " + "very " * 20_000),
        _item("q-unicode", "Images/Odd/gray.png", question="Läsion im Röntgenbild? 病变 \u200b"),
        _item("q-unknown-modality", "Images/Odd/gray.png", modality_type="PET-CT"),
    ]
    (qa / "Odd.json").write_text(json.dumps(good + bad_images + records), encoding="utf-8")
    # Files that are not UTF-8: read item by item (good items load, bad ones are counted one by one), the
    # file counted once under warnings. A Windows (cp1252) file, with its curly quote:
    cp1252 = [_item("cp1252-accent", "Images/Odd/gray.png", question="Lésion ‘visible’?"),
              _item("cp1252-ascii", "Images/Odd/rgba.png"),
              _item("cp1252-one-option", "Images/Odd/gray.png", options=("Oui",), gt="Oui")]
    (qa / "Latin.json").write_bytes(json.dumps(cp1252, ensure_ascii=False).encode("cp1252"))
    # A Latin-1 file with a byte cp1252 leaves undefined (0x81): decoded as Latin-1.
    latin1 = [_item("latin-1", "Images/Odd/gray.png", question="Läsion\x81?")]
    (qa / "Latin1.json").write_bytes(json.dumps(latin1, ensure_ascii=False).encode("latin-1"))
    # UTF-8 with a byte-order mark, and UTF-16: Unicode, read without a warning.
    (qa / "Bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps([_item("bom", "Images/Odd/gray.png",
                                                                         question="Größe?")]).encode())
    (qa / "Wide.json").write_bytes(json.dumps([_item("utf16", "Images/Odd/gray.png", question="病变?")],
                                              ensure_ascii=False).encode("utf-16"))
    return root


@pytest.fixture(scope="module")
def odd(odd_tree):
    return load_omnimedvqa(odd_tree)


def test_unusual_image_modes_load_and_reach_the_model_as_rgb(odd):
    ids = {r["id"] for r in odd.records}
    assert {f"Odd/img-{n}" for n in ("gray.png", "rgba.png", "palette.png", "deep16.png", "good.jpg",
                                     "trailing.jpg", "whole.png")} <= ids
    ds = to_dataset(odd.records)
    for row in ds:
        img = to_rgb(row["image"])
        assert img.mode == "RGB" and img.size in ((48, 40),), row["id"]
        if row["id"] == "Odd/img-deep16.png":
            # 16-bit values are rescaled to 0..255, not clipped to white.
            arr = np.asarray(img)
            assert len(np.unique(arr)) > 100 and arr.min() == 0 and arr.max() == 255


def test_broken_images_are_counted_skips_that_name_the_file(odd):
    assert odd.skipped["unreadable_image"] == 4
    text = "\n".join(odd.examples["unreadable_image"])
    for name in ("truncated.jpg", "truncated.png", "empty.png", "bomb.png"):
        assert name in text
    assert "decompression bomb" in text


def test_odd_records_are_kept_or_counted_never_dropped_silently(odd, odd_tree):
    ids = {r["id"] for r in odd.records}
    assert {"Odd/q-huge", "Odd/q-unicode"} <= ids  # long and non-ASCII questions are fine
    huge = next(r for r in odd.records if r["id"] == "Odd/q-huge")
    assert len(huge["question"]) > 100_000
    # empty question, blank question, a single option; and a single option in the cp1252 file
    assert odd.skipped["missing_field"] == 4
    assert any("option_B" in m for m in odd.examples["missing_field"])
    assert odd.skipped["bad_option_count"] == 2  # a fifth option is not silently dropped
    assert odd.skipped["unknown_modality"] == 1
    assert odd.skipped["malformed_json"] == 0  # no file is lost whole any more (see the test below)
    # Every item of every file is accounted for: kept + skipped = written.
    qa = odd_tree / "QA_information" / "Open-access"
    written = sum(len(json.loads(f.read_bytes().decode(enc))) for f, enc in (
        (qa / "Odd.json", "utf-8"), (qa / "Latin.json", "cp1252"), (qa / "Latin1.json", "latin-1"),
        (qa / "Bom.json", "utf-8-sig"), (qa / "Wide.json", "utf-16")))
    assert len(odd.records) + odd.n_skipped == written


def test_a_non_utf8_file_loads_its_good_items_and_is_one_counted_warning(odd):
    by_id = {r["id"]: r for r in odd.records}
    # Decoded as the file's legacy encoding: the accented and curly-quoted text is right.
    assert by_id["Odd/cp1252-accent"]["question"] == "Lésion ‘visible’?"
    assert by_id["Odd/cp1252-ascii"]["question"] == "Is there a lesion?"
    assert by_id["Odd/latin-1"]["question"] == "Läsion\x81?"
    # Its bad items are skipped one by one, naming the file and item, like any file's.
    assert any("Latin.json item 2" in m for m in odd.examples["missing_field"])
    # One warning per file, naming it, the encoding used and how many items hold non-ASCII text.
    assert odd.warnings == {"non_utf8_json": 2}
    latin, latin1 = sorted(odd.warning_examples["non_utf8_json"])
    assert latin.startswith("QA_information/Open-access/Latin.json: not UTF-8") and "decoded as cp1252" in latin
    assert "3 items read one by one, 1 of them with non-ASCII text" in latin
    assert "Latin1.json" in latin1 and "decoded as latin-1" in latin1
    enc = {r["id"]: json.loads(r["provenance"]).get("encoding") for r in odd.records}
    assert enc["Odd/cp1252-accent"] == enc["Odd/cp1252-ascii"] == "cp1252" and enc["Odd/latin-1"] == "latin-1"
    # A UTF-8 byte-order mark and UTF-16 are Unicode: read as such, without a warning.
    assert by_id["Odd/bom"]["question"] == "Größe?" and by_id["Odd/utf16"]["question"] == "病变?"
    assert enc["Odd/bom"] is None and enc["Odd/utf16"] is None
    assert "non_utf8_json" not in odd.examples  # warnings are not skips
    # stage=inspect's tables show them, apart from the skips.
    text = format_stats(dataset_stats(odd.records), odd.skipped, examples=odd.examples,
                        warnings=odd.warnings, warning_examples=odd.warning_examples)
    assert "Loaded with warnings: 2" in text and "decoded as cp1252" in text


def test_a_file_that_is_not_json_is_still_one_counted_skip(tmp_path):
    qa = tmp_path / "QA_information" / "Open-access"
    qa.mkdir(parents=True)
    (qa / "Garbage.json").write_bytes(b"\xff\xfe not json \x81 at all")
    (qa / "Dict.json").write_text('{"not": "a list"}')
    res = load_omnimedvqa(tmp_path)
    assert res.records == [] and res.skipped == {"malformed_json": 2} and not res.warnings


def test_medr1_one_and_five_options_are_counted_skips(tmp_path):
    img = tmp_path / "Images" / "Set" / "a.png"
    _save(Image.new("RGB", (8, 8), (1, 2, 3)), img)
    items = [
        {"image": "Images/Set/a.png", "problem": "Which? A)CT, B)MRI, C)US, D)OCT, E)PET", "solution": "<answer>A</answer>"},
        {"image": "Images/Set/a.png", "problem": "Only one? A)yes", "solution": "<answer>A</answer>"},
        {"image": "Images/Set/a.png", "problem": "Fine? A)yes, B)no", "solution": "<answer>B</answer>"},
        {"image": "Images/Set/a.png", "problem": "", "solution": "<answer>A</answer>"},
        {"image": "Images/Set/a.png", "problem": "A)yes, B)no", "solution": "<answer>A</answer>"},
    ]
    path = tmp_path / "Splits" / "modality" / "train" / "CT_train.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(items))
    res = load_omnimedvqa(tmp_path, axis="modality")
    assert len(res.records) == 1 and res.records[0]["options"] == ["yes", "no"]
    assert dict(res.skipped) == {"bad_option_count": 1, "unparseable_options": 2, "missing_field": 1}
    assert "5 options" in res.examples["bad_option_count"][0]
    # Four options still parse as before; the fifth is no longer glued onto option D.
    assert parse_problem("Which? A)CT, B)MRI, C)US, D)OCT")[1] == ["CT", "MRI", "US", "OCT"]
    assert parse_problem("Which? A)CT, B)MRI, C)US, D)OCT, E)PET")[1][3] == "OCT"


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I", "F", "LA", "P", "1", "CMYK"])
def test_every_image_mode_converts_to_rgb_for_training_and_for_the_local_generator(mode):
    ramp = np.arange(32 * 32).reshape(32, 32) * 60
    deep = {"I;16": ramp.astype(np.uint16), "I;16B": ramp.astype(">u2"), "I": ramp.astype(np.int32),
            "F": ramp.astype(np.float32)}
    img = Image.fromarray(deep[mode]) if mode in deep else Image.new("RGB", (32, 32), (9, 99, 199)).convert(mode)
    assert img.mode == mode
    for out in (to_rgb(img), to_pil(img)):
        assert out.mode == "RGB" and out.size == (32, 32)
        if mode in deep:  # rescaled, not saturated to white
            assert len(np.unique(np.asarray(out))) > 100
