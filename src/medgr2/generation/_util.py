"""Small helpers shared by the generation modules (hashing, seeds, image bytes)."""

from __future__ import annotations

import hashlib
import io
from typing import Any

from PIL import Image

from medgr2.utils.hashing import stable_hash  # the one hash; re-exported for the generation modules


def derive_seed(*parts: Any) -> int:
    """A 31-bit integer seed derived from ``parts`` (fits every RNG and API ``seed`` field)."""
    return int(stable_hash(*parts, length=8), 16) & 0x7FFFFFFF


def sha256_text(text: str) -> str:
    """Full hex sha256 of a text (the raw generator response in provenance)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def to_pil(image: Any) -> Image.Image:
    """A record's image (PIL image, encoded bytes, ``{"bytes", "path"}`` dict or path) as RGB PIL, converted
    like the training collator does (a plain ``convert("RGB")`` saturates 16-bit images to white)."""
    from medgr2.data.collate import to_rgb

    if isinstance(image, Image.Image):
        return to_rgb(image)
    data, _ = image_bytes(image)
    return to_rgb(Image.open(io.BytesIO(data)))


def image_bytes(image: Any) -> tuple[bytes, str]:
    """Encoded bytes and MIME type of a record's image (PIL images are encoded as PNG)."""
    if image is None:
        raise ValueError("record has no image")
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue(), "image/png"
    if isinstance(image, dict):
        if image.get("bytes"):
            return _encoded(image["bytes"])
        if image.get("path"):
            return image_bytes(str(image["path"]))
        raise ValueError("image dict has neither bytes nor path")
    if isinstance(image, bytes | bytearray):
        return _encoded(bytes(image))
    if isinstance(image, str):
        with open(image, "rb") as fh:
            return _encoded(fh.read())
    raise TypeError(f"unsupported image type {type(image).__name__}")


def _encoded(data: bytes) -> tuple[bytes, str]:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return data, "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return data, "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return data, "image/webp"
    # Another container (TIFF, BMP, ...): re-encode as PNG so an API always gets a format it accepts.
    return image_bytes(Image.open(io.BytesIO(data)))
