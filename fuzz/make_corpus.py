#!/usr/bin/env python3
"""Writes the fuzz seed corpus: fuzz/corpus/instance/ and fuzz/corpus/assemble/.

Small valid CT instances (32x32 single-frame CT, 16x16x16 Enhanced CT), signed and unsigned,
in several transfer syntaxes, plus truncated copies. pydicom writes them; JPEG lossless (DCMTK
dcmcjpeg) and JPEG 2000 (gdcmconv) seeds are added when those tools are installed
(scripts/install-test-deps installs both). Fixed UIDs and pixel values: reruns give the same
bytes for the pydicom-made seeds.

Seed layouts (the targets' input formats, see fuzz/README.md):
  instance: [selector][uid length L][L bytes: command's SOP Instance UID][dataset bytes in the
            transfer syntax]; selector bit 7 = Enhanced CT, bits 0-6 = index into TS_LIST.
  assemble: [n-1][u32 LE length, bytes] x (n-1) [last file's bytes]; files are whole Part 10
            files (preamble, meta, dataset).
"""

import io
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    RLELossless,
)

# The receiver's candidate transfer syntaxes, in appliance/src/receive/mod.rs order (all are
# decodable in a default-feature build, so the instance target indexes this same list).
TS_LIST = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
]
CT = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
ROOT = "1.2.826.0.1.3680043.10.1481.9"
STUDY = ROOT + ".1"
FOR = ROOT + ".2"


def pixels(rows, cols, frames, signed, seed):
    """A body disk (soft tissue) with one bright calcium-like spot per frame, as stored values
    (HU + 1024 unsigned, HU signed with intercept 0)."""
    y, x = np.mgrid[0:rows, 0:cols]
    r2 = (y - rows / 2) ** 2 + (x - cols / 2) ** 2
    out = np.empty((frames, rows, cols), dtype=np.int32)
    rng = np.random.default_rng(seed)
    for f in range(frames):
        hu = np.where(r2 < (rows * 0.45) ** 2, 40, -1000) + rng.integers(-10, 10, (rows, cols))
        cy, cx = rows // 2 + f % 3 - 1, cols // 3
        hu[cy : cy + 2, cx : cx + 2] = 400
        out[f] = hu
    if signed:
        return out.astype(np.int16)
    return (out + 1024).astype(np.uint16)


def base(sop_class, sop_uid, series_uid, rows, cols, signed):
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = FOR
    ds.Modality = "CT"
    ds.Manufacturer = "cacd fuzz seeds"
    ds.PatientName = "Fuzz^Seed"
    ds.PatientID = "FUZZ"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 2
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 16 if signed else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    return ds


def single_frame(sop_uid, series_uid, z, signed, rows=32, cols=32):
    ds = base(CT, sop_uid, series_uid, rows, cols, signed)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = [-11.2, -11.2, z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 2.5
    ds.KVP = 120
    ds.GantryDetectorTilt = 0
    ds.RescaleIntercept = 0 if signed else -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    if not signed:
        ds.PixelPaddingValue = 0
    ds.PixelData = pixels(rows, cols, 1, signed, 7)[0].tobytes()
    return ds


def enhanced(sop_uid, series_uid, signed, frames=16, rows=16, cols=16):
    ds = base(ENHANCED_CT, sop_uid, series_uid, rows, cols, signed)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.NumberOfFrames = frames
    shared = Dataset()
    orient = Dataset()
    orient.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PlaneOrientationSequence = Sequence([orient])
    measures = Dataset()
    measures.PixelSpacing = [0.7, 0.7]
    measures.SliceThickness = 2.5
    shared.PixelMeasuresSequence = Sequence([measures])
    transform = Dataset()
    transform.RescaleIntercept = 0 if signed else -1024
    transform.RescaleSlope = 1
    transform.RescaleType = "HU"
    shared.PixelValueTransformationSequence = Sequence([transform])
    xray = Dataset()
    xray.KVP = 120
    shared.CTXRayDetailsSequence = Sequence([xray])
    acq = Dataset()
    acq.GantryDetectorTilt = 0
    shared.CTAcquisitionDetailsSequence = Sequence([acq])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for f in range(frames):
        item = Dataset()
        pos = Dataset()
        pos.ImagePositionPatient = [-5.6, -5.6, 2.5 * f]
        item.PlanePositionSequence = Sequence([pos])
        content = Dataset()
        content.InStackPositionNumber = f + 1
        item.FrameContentSequence = Sequence([content])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = pixels(rows, cols, frames, signed, 11).tobytes()
    return ds


def encode(ds, ts):
    """Part 10 file bytes of `ds` in transfer syntax `ts`."""
    ds = ds.copy()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if ts in (RLELossless, JPEGLSLossless):
        ds.compress(ts, generate_instance_uid=False)
    ds.file_meta.TransferSyntaxUID = ts
    ds.file_meta.ImplementationClassUID = ROOT + ".0"
    ds.preamble = b"\0" * 128
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def external(tool_args, data):
    """Convert Part 10 bytes with an external tool; None when the tool is missing or fails."""
    if shutil.which(tool_args[0]) is None:
        print(f"  {tool_args[0]} not installed: seed skipped", file=sys.stderr)
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "in.dcm"), Path(tmp, "out.dcm")
        src.write_bytes(data)
        r = subprocess.run(tool_args + [str(src), str(dst)], capture_output=True)
        if r.returncode != 0 or not dst.exists():
            print(f"  {tool_args[0]} failed: {r.stderr.decode()[:200]}", file=sys.stderr)
            return None
        return dst.read_bytes()


def dataset_part(part10):
    """The dataset bytes after preamble and file meta (what arrives in P-DATA), and the TS."""
    assert part10[128:132] == b"DICM"
    group_len = struct.unpack_from("<I", part10, 132 + 8)[0]
    start = 132 + 12 + group_len
    ts = pydicom.dcmread(io.BytesIO(part10), stop_before_pixels=True).file_meta.TransferSyntaxUID
    return part10[start:], str(ts)


def instance_seed(part10, sop_uid, enhanced_class):
    data, ts = dataset_part(part10)
    selector = TS_LIST.index(ts) | (0x80 if enhanced_class else 0)
    uid = sop_uid.encode()
    return bytes([selector, len(uid)]) + uid + data


def assemble_seed(files):
    out = bytearray([len(files) - 1])
    for f in files[:-1]:
        out += struct.pack("<I", len(f)) + f
    return bytes(out + files[-1])


def main():
    here = Path(__file__).resolve().parent
    inst_dir, asm_dir = here / "corpus" / "instance", here / "corpus" / "assemble"
    for d in (inst_dir, asm_dir):
        d.mkdir(parents=True, exist_ok=True)
        for old in d.iterdir():
            old.unlink()

    jpeg_lossless = ["dcmcjpeg", "--encode-lossless-sv1"]
    j2k_lossless = ["gdcmconv", "--j2k"]

    # Single-frame CT: 32x32, several syntaxes, unsigned and signed.
    sf = {}
    for name, ts, signed in [
        ("ct_explicit_unsigned", ExplicitVRLittleEndian, False),
        ("ct_implicit_signed", ImplicitVRLittleEndian, True),
        ("ct_deflate_signed", DeflatedExplicitVRLittleEndian, True),
        ("ct_rle_unsigned", RLELossless, False),
        ("ct_jpegls_signed", JPEGLSLossless, True),
    ]:
        uid = f"{ROOT}.3.{len(sf) + 1}"
        sf[name] = (uid, encode(single_frame(uid, ROOT + ".3", 0.0, signed), ts))
    explicit_unsigned = sf["ct_explicit_unsigned"][1]
    for name, args in [("ct_jpeg_sv1_unsigned", jpeg_lossless), ("ct_j2k_unsigned", j2k_lossless)]:
        data = external(args, explicit_unsigned)
        if data is not None:
            sf[name] = (sf["ct_explicit_unsigned"][0], data)

    # Enhanced CT: 16 frames of 16x16 (the fewest slices assemble scores).
    en = {}
    for name, ts, signed in [
        ("enh_explicit_unsigned", ExplicitVRLittleEndian, False),
        ("enh_implicit_signed", ImplicitVRLittleEndian, True),
        ("enh_deflate_unsigned", DeflatedExplicitVRLittleEndian, False),
        ("enh_rle_signed", RLELossless, True),
        ("enh_jpegls_unsigned", JPEGLSLossless, False),
    ]:
        uid = f"{ROOT}.4.{len(en) + 1}"
        en[name] = (uid, encode(enhanced(uid, f"{ROOT}.4.{len(en) + 1}.1", signed), ts))
    enh_explicit = en["enh_explicit_unsigned"][1]
    for name, args in [("enh_jpeg_sv1_unsigned", jpeg_lossless), ("enh_j2k_unsigned", j2k_lossless)]:
        data = external(args, enh_explicit)
        if data is not None:
            en[name] = (en["enh_explicit_unsigned"][0], data)

    def write(d, name, data):
        (d / name).write_bytes(data)

    # instance: every valid seed, then truncated copies (cut in the header, in the pixels).
    for name, (uid, data) in sf.items():
        write(inst_dir, name, instance_seed(data, uid, False))
    for name, (uid, data) in en.items():
        write(inst_dir, name, instance_seed(data, uid, True))
    uid, data = sf["ct_explicit_unsigned"]
    seed = instance_seed(data, uid, False)
    write(inst_dir, "trunc_ct_header", seed[: len(seed) // 5])
    write(inst_dir, "trunc_ct_pixels", seed[: len(seed) - 700])
    uid, data = sf["ct_deflate_signed"]
    seed = instance_seed(data, uid, False)
    write(inst_dir, "trunc_ct_deflate", seed[: len(seed) // 2])
    uid, data = en["enh_explicit_unsigned"]
    seed = instance_seed(data, uid, True)
    write(inst_dir, "trunc_enh_groups", seed[: len(seed) // 6])

    # assemble: each Enhanced CT alone (reaches decoding), a 4-file single-frame series (too
    # few slices), the same enhanced instance twice, and truncated enhanced files.
    for name, (_, data) in en.items():
        write(asm_dir, name, assemble_seed([data]))
    stack = [
        encode(single_frame(f"{ROOT}.5.{i}", ROOT + ".5", 2.5 * i, i % 2 == 1),
               [ExplicitVRLittleEndian, ImplicitVRLittleEndian][i % 2])
        for i in range(4)
    ]
    write(asm_dir, "ct_stack4", assemble_seed(stack))
    write(asm_dir, "enh_twice", assemble_seed([enh_explicit, enh_explicit]))
    write(asm_dir, "enh_and_ct", assemble_seed([enh_explicit, explicit_unsigned]))
    write(asm_dir, "trunc_enh_pixels", assemble_seed([enh_explicit[: len(enh_explicit) - 3000]]))
    rle = en["enh_rle_signed"][1]
    write(asm_dir, "trunc_enh_rle", assemble_seed([rle[: len(rle) - 500]]))
    write(asm_dir, "trunc_enh_header", assemble_seed([enh_explicit[:900]]))

    for d in (inst_dir, asm_dir):
        files = sorted(d.iterdir())
        print(f"{d.relative_to(here)}: {len(files)} seeds, {sum(f.stat().st_size for f in files)} bytes,"
              f" largest {max(f.stat().st_size for f in files)}")


if __name__ == "__main__":
    main()
