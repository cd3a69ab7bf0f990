"""Provenance marks benchmark: how robust the invisible watermark is, whether the XMP marks survive the dataset
formats people read synthetic data with, and what marking costs next to generating.

    OMP_NUM_THREADS=1 python bench/provenance.py    # everything; ~10 min on 2 vCPUs
    python bench/provenance.py --marked 8 --unmarked 40 --skip-ray --json out.json

1. Watermark (``pipelines.provenance.watermark``, both imwatermark methods): detection rate after JPEG
   re-encoding at quality 90 / 75 / 50 (Pillow's defaults otherwise, so 4:2:0 chroma), resizing to half size
   (bicubic), a centre crop to 80 %; the share of images it could not mark at all; and the false-positive
   rate on never-marked images. Images: the shapes world's (64 px, upscaled bicubic to ``--side``: the
   watermark needs 256x256) and procedural photo-like ones (``shapes.photos``) at ``--side``.
2. XMP survival: marked JPEG / PNG / WebP bytes through a tar written with ``tarfile`` and read with
   ``webdataset.WebDataset``; Hugging Face ``datasets`` (an ``Image`` column written to parquet, loaded with
   ``load_dataset("parquet")``, read undecoded); Ray Data (``read_binary_files``, and a parquet round trip
   through ``write_parquet`` / ``read_parquet``); and, for contrast, a Pillow decode + re-encode.
3. Cost per image as a ratio to the demo model's generation time (``models/unidiffuser-shapes``, 25 steps,
   guidance 3, t2i, CPU): XMP marking of encoded bytes, the watermark (at 256 and 512 px: the model's 64 px
   are too small for it) and a C2PA signature (a throwaway test CA).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tarfile
import tempfile
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.provenance.watermark import (
    DETECTION_THRESHOLD,
    METHODS,
    WatermarkError,
    embed_watermark,
    watermark_match,
    watermark_payload,
)
from shapes.photos import photo_like
from shapes.world import ShapesWorld
from unidiffuser.marks.marking import mark_image, read_marks
from unidiffuser.marks.record import GenerationRecord

PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
RECORD = GenerationRecord(
    software="unidiffuser-batch", software_version="0.1.0", model_id="models/unidiffuser-shapes",
    model_version="bench", mode="t2i", prompt="a big red circle in the top-left corner on a grey background",
    seed=0, steps=25, guidance_scale=3.0, cfg_mode="true_uncond", data_type=1, dtype="float32", job="bench",
    key="bench_0",
)  # fmt: skip


def encode(pixels: np.ndarray, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=PIL_FORMATS[fmt], **options)
    return buffer.getvalue()


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


# --- 1. watermark robustness -----------------------------------------------------------------------------------


def world_images(count: int, side: int, start: int = 0) -> list[np.ndarray]:
    world = ShapesWorld(seed=0)
    return [
        np.asarray(
            Image.fromarray(world.sample(i, "val").image).resize((side, side), Image.Resampling.BICUBIC)
        )
        for i in range(start, start + count)
    ]


def photos(count: int, side: int, start: int = 0) -> list[np.ndarray]:
    return [photo_like(side, side, seed) for seed in range(start, start + count)]


def _half(pixels: np.ndarray) -> np.ndarray:
    height, width = pixels.shape[:2]
    return np.asarray(Image.fromarray(pixels).resize((width // 2, height // 2), Image.Resampling.BICUBIC))


def _crop(pixels: np.ndarray) -> np.ndarray:
    height, width = pixels.shape[:2]
    h, w = int(height * 0.8), int(width * 0.8)
    top, left = (height - h) // 2, (width - w) // 2
    return pixels[top : top + h, left : left + w]


ATTACKS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none (PNG)": lambda p: decode(encode(p, "png")),
    "JPEG q90": lambda p: decode(encode(p, "jpg", quality=90)),
    "JPEG q75": lambda p: decode(encode(p, "jpg", quality=75)),
    "JPEG q50": lambda p: decode(encode(p, "jpg", quality=50)),
    "resize 1/2": _half,
    "centre crop 80%": _crop,
}


def _match_or_zero(pixels: np.ndarray, payload: bytes, method: str) -> float:
    try:
        return watermark_match(pixels, payload, method)  # type: ignore[arg-type]
    except WatermarkError:  # too small after the attack: nothing can be read
        return 0.0


def watermark_robustness(images: list[np.ndarray], payload: bytes, method: str) -> dict:
    """Per attack: the share of marked images still detected and their mean bit match."""
    matches: dict[str, list[float]] = {name: [] for name in ATTACKS}
    refused, seconds = 0, []
    for pixels in images:
        start = time.perf_counter()
        try:
            marked = embed_watermark(pixels, payload, method)  # type: ignore[arg-type]
        except WatermarkError:
            refused += 1
            continue
        seconds.append(time.perf_counter() - start)
        for name, attack in ATTACKS.items():
            matches[name].append(_match_or_zero(attack(marked), payload, method))
    return {
        "images": len(images),
        "refused": refused,
        "embed_s": float(np.median(seconds)) if seconds else None,
        "detected": {
            n: float(np.mean([m >= DETECTION_THRESHOLD for m in v])) if v else None
            for n, v in matches.items()
        },
        "mean_match": {n: float(np.mean(v)) if v else None for n, v in matches.items()},
    }


def false_positives(images: list[np.ndarray], payload: bytes, method: str) -> dict:
    """Never-marked images (as they are, and JPEG q90) called watermarked with ``payload``."""
    reads = [_match_or_zero(p, payload, method) for p in images]
    reads += [_match_or_zero(decode(encode(p, "jpg", quality=90)), payload, method) for p in images]
    return {
        "reads": len(reads),
        "false_positives": int(sum(m >= DETECTION_THRESHOLD for m in reads)),
        "max_match": float(max(reads)),
        "mean_match": float(np.mean(reads)),
    }


# --- 2. XMP survival -------------------------------------------------------------------------------------------


def _survived(files: dict[str, bytes], found: dict[str, bytes]) -> dict:
    same = sum(found.get(name) == data for name, data in files.items())
    marked = sum(
        (m := read_marks(found[name])) is not None and m.record == RECORD for name in files if name in found
    )
    return {"files": len(files), "bytes_identical": same, "marks_read": marked}


def through_webdataset(files: dict[str, bytes], folder: Path) -> dict:
    import webdataset as wds  # type: ignore[import-untyped]

    path = folder / "shard-000000.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    found = {}
    for sample in wds.WebDataset(str(path), shardshuffle=False):
        for ext in PIL_FORMATS:
            if ext in sample:
                found[f"{sample['__key__']}.{ext}"] = sample[ext]
    return _survived(files, found)


def through_datasets(files: dict[str, bytes], folder: Path) -> dict:
    import datasets  # type: ignore[import-untyped]

    table = datasets.Dataset.from_dict(
        {"name": list(files), "image": [{"bytes": data, "path": None} for data in files.values()]}
    ).cast_column("image", datasets.Image())
    table.to_parquet(str(folder / "data.parquet"))
    loaded = datasets.load_dataset("parquet", data_files=str(folder / "data.parquet"), split="train")
    loaded = loaded.cast_column("image", datasets.Image(decode=False))
    return _survived(files, {row["name"]: row["image"]["bytes"] for row in loaded})


def through_ray(files: dict[str, bytes], folder: Path) -> dict[str, dict]:
    import ray

    for name, data in files.items():
        (folder / name).write_bytes(data)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False  # no progress lines between the results
    try:
        rows = ray.data.read_binary_files(str(folder), include_paths=True).take_all()
        binary = _survived(files, {Path(row["path"]).name: row["bytes"] for row in rows})
        ray.data.from_items([{"name": n, "image": d} for n, d in files.items()]).write_parquet(
            str(folder / "pq")
        )
        rows = ray.data.read_parquet(str(folder / "pq")).take_all()
        parquet = _survived(files, {row["name"]: row["image"] for row in rows})
    finally:
        ray.shutdown()
    return {"Ray Data read_binary_files": binary, "Ray Data write_parquet + read_parquet": parquet}


def through_pillow_reencode(files: dict[str, bytes]) -> dict:
    found = {}
    for name, data in files.items():
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            buffer = io.BytesIO()
            image.save(buffer, format=image.format)
            found[name] = buffer.getvalue()
    return _survived(files, found)


def xmp_survival(skip_ray: bool) -> dict[str, dict]:
    sources = photos(4, 96, start=100)
    files = {
        f"sample-{i:03d}.{ext}": mark_image(encode(pixels, ext), ext, RECORD)
        for i, pixels in enumerate(sources)
        for ext in PIL_FORMATS
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for sub in ("wds", "hf", "ray"):
            (root / sub).mkdir()
        results = {
            "webdataset (tarfile -> WebDataset)": through_webdataset(files, root / "wds"),
            "HF datasets (Image column -> parquet -> load_dataset)": through_datasets(files, root / "hf"),
        }
        if not skip_ray:
            results |= through_ray(files, root / "ray")
    results["Pillow decode + re-encode (for contrast)"] = through_pillow_reencode(files)
    return results


# --- 3. cost ---------------------------------------------------------------------------------------------------


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def generation_seconds(checkpoint: str, batch: int, repeats: int) -> tuple[float, list[np.ndarray]]:
    """Median seconds per image of ``repeats`` t2i batches of ``batch`` prompts, and the last batch's images."""
    import torch

    from unidiffuser import UniDiffuserEngine

    torch.manual_seed(0)
    engine = UniDiffuserEngine.from_pretrained(checkpoint, steps=25, guidance_scale=3.0, batch_size=batch)
    prompts = [s.caption for s in (ShapesWorld(seed=0).sample(i, "heldout") for i in range(batch))]
    engine.t2i(prompts[:2], seeds=[0, 1])  # warm-up
    times, results = [], []
    for repeat in range(repeats):
        start = time.perf_counter()
        results = engine.t2i(prompts, seeds=[repeat * batch + i for i in range(batch)])
        times.append((time.perf_counter() - start) / batch)
    return float(np.median(times)), [r.image for r in results if r.image is not None]


def _throwaway_signer():  # -> C2paSigner
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from pipelines.provenance.c2pa_manifest import load_signer

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    usage = dict(content_commitment=False, key_encipherment=False, data_encipherment=False, key_agreement=False,
                 encipher_only=False, decipher_only=False)  # fmt: skip
    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def builder(subject: str, public: object) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name("bench root"))
            .public_key(public).serial_number(x509.random_serial_number())  # type: ignore[arg-type]
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )  # fmt: skip

    ca = (
        builder("bench root", ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, **usage), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        builder("bench signer", key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, **usage), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    chain = cert.public_bytes(pem) + ca.public_bytes(pem)
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return load_signer(chain, key_pem)


def costs(checkpoint: str, batch: int, repeats: int) -> dict:
    from pipelines.provenance.c2pa_manifest import sign_image

    generate_s, images = generation_seconds(checkpoint, batch, repeats=3)
    image = images[0]
    payload = watermark_payload("bench")
    signer = _throwaway_signer()
    rows: dict[str, float] = {}
    for ext in PIL_FORMATS:
        data = encode(image, ext)
        rows[f"encode {ext} (64 px, reference)"] = _median_seconds(partial(encode, image, ext), repeats)
        rows[f"XMP mark_image {ext}"] = _median_seconds(partial(mark_image, data, ext, RECORD), repeats)
        rows[f"C2PA sign_image {ext}"] = _median_seconds(
            partial(sign_image, data, ext, signer, RECORD), repeats
        )
    for side in (256, 512):
        big = np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BICUBIC))
        for method in METHODS:
            rows[f"watermark {method} embed+check {side} px"] = _median_seconds(
                partial(embed_watermark, big, payload, method), max(3, repeats // 10)
            )
    return {
        "generate_s_per_image": generate_s,
        "seconds": rows,
        "ratio": {k: v / generate_s for k, v in rows.items()},
    }


# --- report ----------------------------------------------------------------------------------------------------


def _fmt(value: float | None, pattern: str = "{:.2f}") -> str:
    return "-" if value is None else pattern.format(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--marked", type=int, default=16, help="images of each kind to watermark")
    parser.add_argument("--unmarked", type=int, default=100, help="never-marked images of each kind")
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--checkpoint", default="models/unidiffuser-shapes")
    parser.add_argument("--batch", type=int, default=8, help="prompts per generation batch")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch and OpenCV threads (1: stable on shared CPUs)"
    )
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--json", type=Path, default=Path("bench-provenance.json"))
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    import cv2
    import torch

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    report: dict = {
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {args.threads} torch/OpenCV threads",
        "load_average_start": os.getloadavg(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    payload = watermark_payload("bench job")
    kinds = {f"world 64 px upscaled to {args.side}": world_images, f"photo-like {args.side} px": photos}
    report["watermark"] = {}
    for method in METHODS:
        for kind, make in kinds.items():
            images = make(args.marked, args.side)
            unmarked = make(args.unmarked, args.side, start=1000)
            report["watermark"][f"{method} | {kind}"] = watermark_robustness(images, payload, method) | {
                "unmarked": false_positives(unmarked, payload, method)
            }
            print(method, kind, json.dumps(report["watermark"][f"{method} | {kind}"]), flush=True)
    report["xmp_survival"] = xmp_survival(args.skip_ray)
    report["cost"] = costs(args.checkpoint, args.batch, args.repeats)

    print(f"\nwatermark, detection rate (match >= {DETECTION_THRESHOLD:.3f}) among the images it could mark")
    header = (
        f"{'method | images':<48} {'refused':>8} " + " ".join(f"{a:>15}" for a in ATTACKS) + f" {'FP':>9}"
    )
    print(header)
    for name, row in report["watermark"].items():
        fp = row["unmarked"]
        cells = " ".join(f"{_fmt(row['detected'][a]):>15}" for a in ATTACKS)
        print(
            f"{name:<48} {row['refused']:>3}/{row['images']:<4} {cells} {fp['false_positives']:>4}/{fp['reads']:<4}"
        )
    print("\nXMP survival (files: bytes identical / marks read)")
    for name, row in report["xmp_survival"].items():
        print(f"{name:<55} {row['bytes_identical']}/{row['files']} {row['marks_read']}/{row['files']}")
    cost = report["cost"]
    print(
        f"\ncost per image; generation (t2i, 25 steps, CPU) = {cost['generate_s_per_image'] * 1000:.1f} ms/image"
    )
    for name, seconds in cost["seconds"].items():
        print(f"{name:<45} {seconds * 1000:>9.2f} ms {cost['ratio'][name]:>8.4f}x")
    report["load_average_end"] = os.getloadavg()
    print(f"load average: start {report['load_average_start']}, end {report['load_average_end']}")
    args.json.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
