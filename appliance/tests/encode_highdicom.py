#!/usr/bin/env python3
"""Independent reader check of cacd's SEG and SR (run by appliance/tests/encode.rs).

Usage: encode_highdicom.py CASE_DIR

CASE_DIR holds what the Rust test wrote: seg.dcm (absent when there is no calcium), sr.dcm,
expected_labels.npy (cacd's own lesion mask, uint8 [z, y, x], 0 or the vessel label
1 LM … 4 RCA) and expected.json (source SOP instance UID and frame per slice, the expected
ImagePositionPatient per slice, the scores).

Checks:
* highdicom reads the SEG; every frame maps back to its source slice through
  SourceImageSequence, and the mask equals cacd's voxel for voxel, both through highdicom's
  get_pixels_by_source_instance / get_pixels_by_source_frame and through a plain pydicom walk
  of the per-frame functional groups (which also checks each frame's ImagePositionPatient);
* highdicom and pydicom read the SR; the total and per-vessel Agatston scores and the total
  volume equal cacd's; the no-calcium note is present exactly when there is no SEG.

Exit status 0 when every check passes; the first failure is printed and exits 1.
"""
import json
import os
import sys

import numpy as np
import pydicom
import highdicom as hd

VESSEL_LABEL = {"3227004": 1, "59438005": 2, "57396003": 3, "13647002": 4}
VESSEL_NAME = {1: "LM", 2: "LAD", 3: "LCX", 4: "RCA"}
NO_CALCIUM = "No coronary calcium detected; no segmentation created"


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def check_seg(case, expected, labels):
    path = os.path.join(case, "seg.dcm")
    seg = hd.seg.segread(path)
    if seg.segmentation_type.value != "BINARY":
        fail(f"segmentation type {seg.segmentation_type}")
    if seg.StudyInstanceUID != expected["study_instance_uid"]:
        fail("SEG is not in the source study")
    if seg.FrameOfReferenceUID != expected["frame_of_reference_uid"]:
        fail("SEG frame of reference differs from the source")

    # Segment number → vessel label, from each segment's anatomic region code.
    seg_to_label = {}
    for n in seg.segment_numbers:
        desc = seg.get_segment_description(n)
        prop = desc.segmented_property_type
        if prop.value != "18115005" or desc.segmented_property_category.value != "49755003":
            fail(f"segment {n}: property {prop.value}")
        regions = desc.anatomic_regions
        if len(regions) != 1 or regions[0].value not in VESSEL_LABEL:
            fail(f"segment {n}: anatomic region {[r.value for r in regions]}")
        seg_to_label[n] = VESSEL_LABEL[regions[0].value]
    want_labels = sorted(set(np.unique(labels)) - {0})
    if sorted(seg_to_label.values()) != want_labels:
        fail(f"segments for vessels {sorted(seg_to_label.values())}, expected {want_labels}")

    uids = expected["sop_instance_uids"]
    frames = expected["source_frames"]
    z_of = {(u, f): z for z, (u, f) in enumerate(zip(uids, frames))}
    multiframe = expected["multiframe"]

    # 1. highdicom's own mapping from source instances/frames to segmentation frames.
    got = np.zeros_like(labels)
    for n, label in seg_to_label.items():
        if multiframe:
            px = seg.get_pixels_by_source_frame(
                source_sop_instance_uid=uids[0],
                source_frame_numbers=frames,
                segment_numbers=[n],
                assert_missing_frames_are_empty=True,
            )
        else:
            px = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=uids,
                segment_numbers=[n],
                assert_missing_frames_are_empty=True,
            )
        px = np.asarray(px)[..., 0]
        if px.shape != labels.shape:
            fail(f"highdicom pixels {px.shape}, expected {labels.shape}")
        if np.any((got != 0) & (px != 0)):
            fail("segments overlap")
        got[px != 0] = label
    if not np.array_equal(got, labels):
        diff = np.argwhere(got != labels)
        fail(f"highdicom mask differs from cacd's at {len(diff)} voxels, first {diff[:5].tolist()}")

    # 2. A plain walk: each frame's SourceImageSequence → slice, its segment → vessel.
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    if arr.ndim == 2:
        arr = arr[None]
    walk = np.zeros_like(labels)
    for i, fg in enumerate(ds.PerFrameFunctionalGroupsSequence):
        src = fg.DerivationImageSequence[0].SourceImageSequence[0]
        if src.ReferencedSOPClassUID != expected["sop_class_uid"]:
            fail(f"frame {i + 1}: source SOP class {src.ReferencedSOPClassUID}")
        frame_no = int(src.ReferencedFrameNumber) if "ReferencedFrameNumber" in src else 1
        if multiframe != ("ReferencedFrameNumber" in src):
            fail(f"frame {i + 1}: ReferencedFrameNumber present={not multiframe}")
        key = (src.ReferencedSOPInstanceUID, frame_no)
        if key not in z_of:
            fail(f"frame {i + 1} references an unknown source {key}")
        z = z_of[key]
        pos = [float(v) for v in fg.PlanePositionSequence[0].ImagePositionPatient]
        if not np.allclose(pos, expected["positions"][z], atol=1e-4):
            fail(f"frame {i + 1}: position {pos}, source slice {z} is at {expected['positions'][z]}")
        n = int(fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        if not arr[i].any():
            fail(f"frame {i + 1} is empty (empty frames must be skipped)")
        walk[z][arr[i] != 0] = seg_to_label[n]
    if not np.array_equal(walk, labels):
        diff = np.argwhere(walk != labels)
        fail(f"frame walk differs from cacd's mask at {len(diff)} voxels, first {diff[:5].tolist()}")
    print(f"SEG ok: {len(ds.PerFrameFunctionalGroupsSequence)} frames, "
          f"{int((labels != 0).sum())} voxels, segments {seg_to_label}")


def walk_items(items):
    for it in items:
        yield it
        if "ContentSequence" in it:
            yield from walk_items(it.ContentSequence)


def concept(it):
    return it.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in it else None


def check_sr(case, expected, has_seg):
    path = os.path.join(case, "sr.dcm")
    sr = hd.sr.srread(path)
    if sr.SOPClassUID != "1.2.840.10008.5.1.4.1.1.88.33":
        fail(f"SR SOP class {sr.SOPClassUID}")
    if sr.StudyInstanceUID != expected["study_instance_uid"]:
        fail("SR is not in the source study")
    if sr.VerificationFlag != "UNVERIFIED":
        fail(f"VerificationFlag {sr.VerificationFlag}")

    # highdicom's TID 1500 parser: the measurement groups and their Agatston values.
    report = hd.sr.MeasurementReport.from_sequence([sr])
    groups = report.get_image_measurement_groups() + report.get_planar_roi_measurement_groups() \
        + report.get_volumetric_roi_measurement_groups()
    by_tracking = {}
    for g in groups:
        tid = g.tracking_identifier
        for m in g.get_measurements(name=hd.sr.CodedConcept("450360000", "SCT", "Coronary artery calcium score")):
            by_tracking[tid] = float(m.value)
    want = expected["per_vessel"]
    for label, name in VESSEL_NAME.items():
        key = f"{name} calcium"
        if key not in by_tracking:
            fail(f"no measurement group {key!r} in {sorted(by_tracking)}")
        if abs(by_tracking[key] - want[name]) > 1e-3:
            fail(f"{name}: SR says {by_tracking[key]}, cacd {want[name]}")
    total_key = "Coronary calcium, all arteries"
    if abs(by_tracking.get(total_key, -1.0) - expected["agatston_total"]) > 1e-3:
        fail(f"total: SR says {by_tracking.get(total_key)}, cacd {expected['agatston_total']}")

    vol_groups = report.get_volumetric_roi_measurement_groups()
    if has_seg:
        seg_ds = pydicom.dcmread(os.path.join(case, "seg.dcm"))
        for g in vol_groups:
            ref = g.referenced_segment
            if ref is None or ref.referenced_sop_instance_uid != seg_ds.SOPInstanceUID:
                fail(f"group {g.tracking_identifier} does not reference the SEG")
        if len(vol_groups) != len(seg_ds.SegmentSequence):
            fail(f"{len(vol_groups)} volumetric groups for {len(seg_ds.SegmentSequence)} segments")
    elif vol_groups:
        fail("volumetric groups without a SEG")

    # pydicom walk: total volume and the no-calcium note.
    items = list(walk_items(sr.ContentSequence))
    texts = [it.TextValue for it in items if it.ValueType == "TEXT"]
    if (NO_CALCIUM in texts) == has_seg:
        fail(f"no-calcium note present={NO_CALCIUM in texts} with SEG={has_seg}")
    volumes = [float(it.MeasuredValueSequence[0].NumericValue) for it in items
               if it.ValueType == "NUM" and concept(it) == "122660"]
    if not any(abs(v - expected["volume_mm3"]) <= 1e-3 for v in volumes):
        fail(f"total volume {expected['volume_mm3']} not among {volumes}")
    for w in expected["warnings"]:
        if w not in texts:
            fail(f"warning {w!r} missing from the SR")
    print(f"SR ok: total {by_tracking[total_key]}, per vessel "
          f"{ {k: v for k, v in by_tracking.items() if k != total_key} }")


def main():
    if len(sys.argv) != 2:
        fail(__doc__)
    case = sys.argv[1]
    with open(os.path.join(case, "expected.json")) as f:
        expected = json.load(f)
    labels = np.load(os.path.join(case, "expected_labels.npy"))
    has_seg = os.path.exists(os.path.join(case, "seg.dcm"))
    if has_seg != bool(labels.any()):
        fail(f"SEG present={has_seg} but mask has {int(labels.astype(bool).sum())} voxels")
    if has_seg:
        check_seg(case, expected, labels)
    check_sr(case, expected, has_seg)
    print("ALL OK")


if __name__ == "__main__":
    main()
