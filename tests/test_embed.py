"""Parameters inside saved images: batchgen.output.embed, and runs with embed: parameters."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import httpx2 as httpx
import pytest
from PIL import ExifTags, Image

from batchgen.output.embed import Provenance, embed_bytes, parameters_text, provenance_json
from tests.runner_helpers import ledger_rows, run_job, sim_config, write_spec

INFO = Provenance(
    prompt="A studio photo of a brass teapot, soft light",
    model="nano-banana-pro",
    aspect_ratio="3:2",
    image_size="2K",
    key="923c36fdabfa7d97b82a56a4a54e4f8f",
    vars={"model": "nano-banana-pro", "subject": "a brass teapot", "light": "soft, warm"},
    job="products",
    width=1536,
    height=1024,
)


def encode(fmt: str, *, mode: str = "RGB", **options: object) -> bytes:
    """A small gradient image in ``fmt``."""
    img = Image.linear_gradient("L").resize((48, 32)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def pixels(data: bytes) -> bytes:
    """The decoded pixels of ``data``."""
    with Image.open(io.BytesIO(data)) as img:
        return img.tobytes()


def user_comment(img: Image.Image) -> str:
    """The EXIF UserComment of ``img``, decoded from UNICODE (UTF-16BE)."""
    raw = img.getexif().get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment]
    assert raw[:8] == b"UNICODE\x00"
    return bytes(raw[8:]).decode("utf-16-be")


def xmp_json(img: Image.Image) -> dict[str, object]:
    """The JSON in the image's XMP packet."""
    xmp = img.info["xmp"]
    text = xmp.decode() if isinstance(xmp, bytes) else xmp
    inner = text.split("<batchgen:parameters>")[1].split("</batchgen:parameters>")[0]
    unescaped = inner.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return dict(json.loads(unescaped))


def test_parameters_text_follows_the_convention() -> None:
    """The prompt, then one settings line; values with commas are quoted as JSON."""
    text = parameters_text(INFO)
    prompt, line = text.rsplit("\n", 1)
    assert prompt == INFO.prompt
    assert line.startswith('Model: nano-banana-pro, Size: 1536x1024, Aspect ratio: "3:2"')
    assert 'Var light: "soft, warm"' in line
    assert "Var subject: a brass teapot" in line
    assert "Var model" not in line
    assert "Key: 923c36fdabfa7d97b82a56a4a54e4f8f" in line


def test_png_gets_both_text_chunks_and_keeps_its_pixels() -> None:
    """A PNG reads back `parameters` and `batchgen` with Pillow; its pixels are the same."""
    served = encode("PNG")
    embedded = embed_bytes(served, INFO)
    with Image.open(io.BytesIO(embedded)) as img:
        assert img.info["parameters"] == parameters_text(INFO)
        assert json.loads(img.info["batchgen"]) == json.loads(provenance_json(INFO))
    assert pixels(embedded) == pixels(served)
    assert embedded.count(b"parameters\x00") == 1


def test_png_embedding_twice_replaces_the_chunks() -> None:
    """Embedding again (a re-download) replaces the text, never repeats it; Unicode is iTXt."""
    info = Provenance(
        prompt="一只猫, watercolour ✓", model="m", aspect_ratio="1:1", image_size="1K", key="k"
    )
    twice = embed_bytes(embed_bytes(encode("PNG"), INFO), info)
    assert twice.count(b"parameters\x00") == 1
    assert twice.count(b"batchgen\x00") == 1
    assert b"iTXtparameters" in twice
    with Image.open(io.BytesIO(twice)) as img:
        assert img.info["parameters"].startswith("一只猫, watercolour ✓\n")


def test_jpeg_gets_exif_user_comment_and_xmp() -> None:
    """A JPEG carries the text in EXIF UserComment and the JSON in XMP; no re-encoding."""
    served = encode("JPEG", quality=80)
    embedded = embed_bytes(served, INFO)
    with Image.open(io.BytesIO(embedded)) as img:
        assert user_comment(img) == parameters_text(INFO)
        assert xmp_json(img)["key"] == INFO.key
        assert img.format == "JPEG"
    assert pixels(embedded) == pixels(served)
    assert embedded.endswith(served[served.index(b"\xff\xda") :])


@pytest.mark.parametrize(
    ("mode", "options"),
    [("RGB", {"quality": 80}), ("RGB", {"lossless": True}), ("RGBA", {"lossless": True})],
    ids=["lossy", "lossless", "alpha"],
)
def test_webp_gets_exif_and_xmp(mode: str, options: dict[str, object]) -> None:
    """A WebP (lossy, lossless, with alpha) gets EXIF and XMP chunks; its pixels stay."""
    served = encode("WEBP", mode=mode, **options)
    embedded = embed_bytes(served, INFO)
    with Image.open(io.BytesIO(embedded)) as img:
        assert img.size == (48, 32)
        assert user_comment(img) == parameters_text(INFO)
        assert xmp_json(img)["vars"] == dict(INFO.vars)
    assert pixels(embedded) == pixels(served)
    again = embed_bytes(embedded, INFO)
    assert again.count(b"EXIF") == 1


def test_other_formats_are_left_as_served() -> None:
    """A GIF has no place for the parameters: its bytes stay as served."""
    gif = encode("GIF")
    assert embed_bytes(gif, INFO) == gif


@pytest.mark.anyio
async def test_embedded_run_writes_readable_chunks_resumes_and_verifies(tmp_path: Path) -> None:
    """A run with embed: parameters writes PNGs with both chunks, records the served and
    the written sha256, and a resume after a damaged file fetches and embeds it again."""
    from batchgen.sim import running_simulator

    spec = write_spec(
        tmp_path,
        """
        name: emb
        output: out
        embed: parameters
        model: nano-banana-fast
        prompt: "a photo of {subject}"
        matrix:
          subject: [cat, "owl, at night"]
        """,
    )
    out = tmp_path / "out"
    async with running_simulator(sim_config()) as sim:
        first = await run_job(spec, sim)
        async with httpx.AsyncClient() as plain:
            served = {
                d for t in (await plain.get(sim.origin + "/_sim/tasks")).json()
                for d in t["served_sha256"]
            }  # fmt: skip
        rows = await ledger_rows(spec)
        assert first.counts["done"] == 2
        for row in rows:
            entry = row.files[0]
            data = (out / str(entry["path"])).read_bytes()
            assert entry["sha256"] == row.sha256 == hashlib.sha256(data).hexdigest()
            assert entry["bytes"] == len(data)
            assert entry["served_sha256"] in served
            assert entry["served_sha256"] != entry["sha256"]
            with Image.open(out / str(entry["path"])) as img:
                assert img.info["parameters"].startswith(row.prompt + "\n")
                assert json.loads(img.info["batchgen"])["key"] == row.key
        manifest = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
        assert {m["served_sha256"] for m in manifest} <= served
        # Damage one file: the next run sees the size is wrong, fetches and embeds again.
        damaged = out / str(rows[0].files[0]["path"])
        damaged.write_bytes(damaged.read_bytes()[:-10])
        again = await run_job(spec, sim)
        assert sim.stats()["submissions_charged"] == 2
    assert again.counts["done"] == 2
    fixed = next(r for r in await ledger_rows(spec) if r.key == rows[0].key)
    assert hashlib.sha256(damaged.read_bytes()).hexdigest() == fixed.sha256
    with Image.open(damaged) as img:
        assert "parameters" in img.info


@pytest.mark.anyio
async def test_default_run_keeps_the_served_bytes(tmp_path: Path) -> None:
    """Without embed, the files are byte for byte what the service served."""
    from batchgen.sim import running_simulator

    spec = write_spec(
        tmp_path,
        """
        name: plain
        output: out
        model: nano-banana-fast
        prompt: "a photo of a cat"
        """,
    )
    async with running_simulator(sim_config()) as sim:
        await run_job(spec, sim)
        async with httpx.AsyncClient() as plain:
            served = (await plain.get(sim.origin + "/_sim/tasks")).json()[0]["served_sha256"]
    row = (await ledger_rows(spec))[0]
    assert [row.sha256] == served
    assert "served_sha256" not in row.files[0]
    with Image.open(tmp_path / "out" / str(row.path)) as img:
        assert "parameters" not in img.info
