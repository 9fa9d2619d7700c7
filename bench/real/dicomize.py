"""A real CT volume (NIfTI from a package's test data) as the DICOM series a scanner would send.

Used by fetch.py. Axial slices inferior → superior, one CT Image Storage instance per slice,
explicit VR little endian, unsigned 16-bit stored values with RescaleIntercept -1024 (as most
scanners store CT), patient coordinates (LPS) from the NIfTI affine. Thicker slices are made
the way a scanner reconstructs them from thin data: each output slice is the mean of the
input over its slab (a box of the output thickness), at the output spacing.

Nothing is invented that the source does not say: no tube voltage, kernel or dose (cacd then
warns that KVP is missing); UIDs are derived from the case name, so every run writes the same
series.
"""

import hashlib
import os

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

def uid(*parts):
    """A stable UID from the parts: 2.25 and 128 bits of their sha256 (PS3.5 B.2), as cacd's
    phantoms make theirs."""
    h = int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:16], "big")
    return f"2.25.{h}"


def load_lps(path):
    """(hu[z, y, x] int16, spacing (z, y, x) mm, origin LPS of voxel [0,0,0]) from a NIfTI file,
    reoriented so that x runs right → left, y anterior → posterior, z inferior → superior."""
    import nibabel as nib

    # Axes permuted so that array axes follow world x, y, z (RAS+); then each axis flipped
    # where its step points the wrong way in LPS (x towards the left, y towards the back).
    img = nib.as_closest_canonical(nib.load(path))
    data = np.asanyarray(img.dataobj)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.affine
    for axis in range(3):
        if lps[axis, axis] < 0:
            data = np.flip(data, axis)
            lps = lps.copy()
            lps[:3, 3] += lps[:3, axis] * (data.shape[axis] - 1)
            lps[:3, axis] = -lps[:3, axis]
    spacing_xyz = np.abs(np.diag(lps)[:3])
    hu = np.transpose(data, (2, 1, 0))  # (x, y, z) -> (z, y, x)
    hu = np.round(hu).astype(np.int16)
    return hu, (float(spacing_xyz[2]), float(spacing_xyz[1]), float(spacing_xyz[0])), lps[:3, 3].astype(float)


def thick_slices(hu, dz, thickness, spacing=None):
    """Slabs of `thickness` mm every `spacing` mm (default: contiguous) from slices `dz` mm apart,
    each the mean of the input over the slab (partial slices weighted by their overlap).
    Returns (stack, z offsets of the slab centres in mm from the first input slice centre)."""
    spacing = spacing or thickness
    n = hu.shape[0]
    extent = n * dz  # input covers [-dz/2, extent - dz/2]
    lo, hi = -dz / 2, extent - dz / 2
    centres = np.arange(lo + thickness / 2, hi - thickness / 2 + 1e-6, spacing)
    out = np.empty((len(centres),) + hu.shape[1:], np.float32)
    for k, c in enumerate(centres):
        a, b = c - thickness / 2, c + thickness / 2
        acc = np.zeros(hu.shape[1:], np.float64)
        wsum = 0.0
        for i in range(n):
            s0, s1 = i * dz - dz / 2, i * dz + dz / 2
            w = max(0.0, min(b, s1) - max(a, s0))
            if w > 0:
                acc += w * hu[i]
                wsum += w
        out[k] = acc / wsum
    return np.round(out).astype(np.int16), centres


def write_series(hu, spacing, origin, out_dir, case, variant, thickness=None, description=""):
    """Writes hu[z, y, x] (HU) as a CT series into out_dir (created), slice k at
    origin + k·spacing_z along +z. Returns the number of files written."""
    os.makedirs(out_dir, exist_ok=True)
    dz, dy, dx = spacing
    study_uid = uid(case, "study")
    series_uid = uid(case, variant, "series")
    frame_uid = uid(case, "frame")
    stored = np.clip(hu.astype(np.int32) + 1024, 0, 65535).astype(np.uint16)
    for k in range(hu.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = uid(case, variant, "instance", k)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = "CT"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientName = f"REAL^{case.upper().replace('-', '_')}"
        ds.PatientID = f"cacd-real-{case}"
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.StudyDate = "20260101"
        ds.StudyTime = "120000"
        ds.StudyID = "1"
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.SeriesDescription = description[:64]
        ds.Manufacturer = "cacd bench/real"
        ds.BodyPartExamined = "CHEST"
        ds.PatientPosition = "HFS"
        ds.SliceThickness = f"{(thickness or dz):.3f}"
        ds.SpacingBetweenSlices = f"{dz:.3f}"
        pos = [origin[0], origin[1], origin[2] + k * dz]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in pos]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.SliceLocation = f"{pos[2]:.4f}"
        ds.PixelSpacing = [f"{dy:.6f}", f"{dx:.6f}"]
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.PixelData = stored[k].tobytes()
        ds.save_as(os.path.join(out_dir, f"CT{k + 1:04d}.dcm"), enforce_file_format=True)
    return hu.shape[0]
