//! Writes small synthetic CT series with dicom-object for the assemble tests: N slices with
//! chosen positions, orientation, transfer syntax and pixel encoding, and the HU they hold.
#![allow(dead_code)] // each test crate uses a different part of this helper

use std::path::{Path, PathBuf};

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;
use ndarray::Array3;

pub const AXIAL: [f64; 6] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0];

/// A synthetic series. Stored values are `(hu - intercept) / slope`.
#[derive(Debug, Clone)]
pub struct Series {
    pub rows: usize,
    pub cols: usize,
    pub slices: usize,
    /// `[z, y, x]` mm.
    pub spacing: [f64; 3],
    pub origin: [f64; 3],
    pub iop: [f64; 6],
    pub transfer_syntax: String,
    pub study_uid: String,
    pub series_uid: String,
    pub for_uid: String,
    pub modality: String,
    pub image_type: String,
    pub sop_class: String,
    pub slope: f64,
    pub intercept: f64,
    pub signed: bool,
    pub bits_stored: u16,
    pub padding: Option<u16>,
    pub tilt: Option<f64>,
    pub seed: u64,
}

impl Series {
    /// A 32×32×20 axial series, 2.5 mm slices, 12-bit unsigned with intercept -1024.
    pub fn new(series_uid: &str) -> Series {
        Series {
            rows: 32,
            cols: 32,
            slices: 20,
            spacing: [2.5, 0.7, 0.7],
            origin: [-11.2, -11.2, -120.0],
            iop: AXIAL,
            transfer_syntax: uids::EXPLICIT_VR_LITTLE_ENDIAN.to_string(),
            study_uid: "1.2.826.0.1.3680043.10.1.1".into(),
            series_uid: series_uid.to_string(),
            for_uid: "1.2.826.0.1.3680043.10.1.9".into(),
            modality: "CT".into(),
            image_type: "ORIGINAL\\PRIMARY\\AXIAL".into(),
            sop_class: uids::CT_IMAGE_STORAGE.into(),
            slope: 1.0,
            intercept: -1024.0,
            signed: false,
            bits_stored: 12,
            padding: None,
            tilt: None,
            seed: 1,
        }
    }

    pub fn normal(&self) -> [f64; 3] {
        let r = [self.iop[0], self.iop[1], self.iop[2]];
        let c = [self.iop[3], self.iop[4], self.iop[5]];
        [
            r[1] * c[2] - r[2] * c[1],
            r[2] * c[0] - r[0] * c[2],
            r[0] * c[1] - r[1] * c[0],
        ]
    }

    /// ImagePositionPatient of slice `z` on the regular grid.
    pub fn position(&self, z: usize) -> [f64; 3] {
        let n = self.normal();
        let d = z as f64 * self.spacing[0];
        [
            self.origin[0] + d * n[0],
            self.origin[1] + d * n[1],
            self.origin[2] + d * n[2],
        ]
    }

    /// The HU each slice holds: a deterministic pattern over -1024..=3071 (fits 12 bits).
    pub fn hu(&self) -> Array3<i16> {
        let seed = self.seed as usize;
        Array3::from_shape_fn((self.slices, self.rows, self.cols), |(z, y, x)| {
            ((x * 37 + y * 91 + z * 53 + seed * 131 + (x * y) % 17) % 4096) as i16 - 1024
        })
    }

    pub fn sop_uid(&self, z: usize) -> String {
        format!("{}.{}", self.series_uid, z + 1)
    }

    fn stored(&self, hu: i16) -> u16 {
        let v = ((f64::from(hu) - self.intercept) / self.slope).round() as i64;
        if self.signed {
            v as i16 as u16
        } else {
            v as u16
        }
    }

    fn base_object(&self, sop_uid: &str) -> InMemDicomObject {
        let mut o = InMemDicomObject::new_empty();
        let s = |o: &mut InMemDicomObject, tag, vr, v: &str| {
            o.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
        };
        s(&mut o, tags::SOP_CLASS_UID, VR::UI, &self.sop_class);
        s(&mut o, tags::SOP_INSTANCE_UID, VR::UI, sop_uid);
        s(&mut o, tags::STUDY_INSTANCE_UID, VR::UI, &self.study_uid);
        s(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, &self.series_uid);
        s(&mut o, tags::FRAME_OF_REFERENCE_UID, VR::UI, &self.for_uid);
        s(&mut o, tags::MODALITY, VR::CS, &self.modality);
        s(&mut o, tags::IMAGE_TYPE, VR::CS, &self.image_type);
        s(&mut o, tags::PATIENT_NAME, VR::PN, "Phantom^Assemble");
        s(&mut o, tags::PATIENT_ID, VR::LO, "ASM-001");
        s(&mut o, tags::PATIENT_BIRTH_DATE, VR::DA, "19600101");
        s(&mut o, tags::PATIENT_SEX, VR::CS, "O");
        s(&mut o, tags::STUDY_DATE, VR::DA, "20260101");
        s(&mut o, tags::STUDY_TIME, VR::TM, "120000");
        s(&mut o, tags::STUDY_ID, VR::SH, "S1");
        s(&mut o, tags::ACCESSION_NUMBER, VR::SH, "ACC1");
        s(&mut o, tags::REFERRING_PHYSICIAN_NAME, VR::PN, "Ref^Doc");
        s(&mut o, tags::SERIES_DESCRIPTION, VR::LO, "Ca score 2.5mm");
        s(&mut o, tags::SERIES_NUMBER, VR::IS, "3");
        s(&mut o, tags::MANUFACTURER, VR::LO, "cacd tests");
        s(&mut o, tags::KVP, VR::DS, "120");
        s(
            &mut o,
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            "MONOCHROME2",
        );
        let us = |o: &mut InMemDicomObject, tag, v: u16| {
            o.put(DataElement::new(tag, VR::US, PrimitiveValue::from(v)));
        };
        us(&mut o, tags::SAMPLES_PER_PIXEL, 1);
        us(&mut o, tags::ROWS, self.rows as u16);
        us(&mut o, tags::COLUMNS, self.cols as u16);
        us(&mut o, tags::BITS_ALLOCATED, 16);
        us(&mut o, tags::BITS_STORED, self.bits_stored);
        us(&mut o, tags::HIGH_BIT, self.bits_stored - 1);
        us(&mut o, tags::PIXEL_REPRESENTATION, u16::from(self.signed));
        if let Some(p) = self.padding {
            if self.signed {
                o.put(DataElement::new(
                    tags::PIXEL_PADDING_VALUE,
                    VR::SS,
                    PrimitiveValue::from(p as i16),
                ));
            } else {
                us(&mut o, tags::PIXEL_PADDING_VALUE, p);
            }
        }
        if let Some(t) = self.tilt {
            s(&mut o, tags::GANTRY_DETECTOR_TILT, VR::DS, &ds(t));
        }
        o
    }

    /// The object for slice `z` placed at `position`, holding `hu` (already `[y, x]`).
    pub fn slice_object(&self, z: usize, position: [f64; 3], hu: &Array3<i16>) -> InMemDicomObject {
        let mut o = self.base_object(&self.sop_uid(z));
        let s = |o: &mut InMemDicomObject, tag, vr, v: &str| {
            o.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
        };
        s(
            &mut o,
            tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            &ds3(&position),
        );
        s(
            &mut o,
            tags::IMAGE_ORIENTATION_PATIENT,
            VR::DS,
            &ds_list(&self.iop),
        );
        s(
            &mut o,
            tags::PIXEL_SPACING,
            VR::DS,
            &ds_list(&self.spacing[1..]),
        );
        s(&mut o, tags::SLICE_THICKNESS, VR::DS, &ds(self.spacing[0]));
        s(&mut o, tags::INSTANCE_NUMBER, VR::IS, &(z + 1).to_string());
        s(&mut o, tags::RESCALE_INTERCEPT, VR::DS, &ds(self.intercept));
        s(&mut o, tags::RESCALE_SLOPE, VR::DS, &ds(self.slope));
        s(&mut o, tags::RESCALE_TYPE, VR::LO, "HU");
        let px: Vec<u16> = hu.iter().map(|&v| self.stored(v)).collect();
        o.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(px.into()),
        ));
        o
    }

    /// Write one file per slice at its regular position; `edit` may change each object.
    pub fn write_with(
        &self,
        dir: &Path,
        mut edit: impl FnMut(usize, &mut InMemDicomObject),
    ) -> Vec<PathBuf> {
        std::fs::create_dir_all(dir).unwrap();
        let hu = self.hu();
        (0..self.slices)
            .map(|z| {
                let plane = hu.slice(ndarray::s![z..z + 1, .., ..]).to_owned();
                let mut o = self.slice_object(z, self.position(z), &plane);
                edit(z, &mut o);
                let path = dir.join(format!("{}_{:04}.dcm", self.series_uid, z));
                write_object(o, &self.transfer_syntax, &path);
                path
            })
            .collect()
    }

    pub fn write(&self, dir: &Path) -> Vec<PathBuf> {
        self.write_with(dir, |_, _| {})
    }

    /// One Enhanced CT instance holding every slice as a frame. `per_frame_rescale` puts the
    /// Pixel Value Transformation in each frame instead of the shared group.
    pub fn write_enhanced(&self, path: &Path, per_frame_rescale: bool) {
        let mut o = self.base_object(&format!("{}.1", self.series_uid));
        o.put(DataElement::new(
            tags::SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(uids::ENHANCED_CT_IMAGE_STORAGE),
        ));
        o.put(DataElement::new(
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            PrimitiveValue::from(self.slices.to_string()),
        ));
        let item = |tag, vr, v: String| {
            InMemDicomObject::from_element_iter([DataElement::new(
                tag,
                vr,
                PrimitiveValue::from(v),
            )])
        };
        let seq = |tag, items: Vec<InMemDicomObject>| {
            DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
        };
        let rescale_item = || {
            InMemDicomObject::from_element_iter([
                DataElement::new(
                    tags::RESCALE_INTERCEPT,
                    VR::DS,
                    PrimitiveValue::from(ds(self.intercept)),
                ),
                DataElement::new(
                    tags::RESCALE_SLOPE,
                    VR::DS,
                    PrimitiveValue::from(ds(self.slope)),
                ),
                DataElement::new(tags::RESCALE_TYPE, VR::LO, PrimitiveValue::from("HU")),
            ])
        };
        let mut shared = InMemDicomObject::from_element_iter([
            seq(
                tags::PIXEL_MEASURES_SEQUENCE,
                vec![InMemDicomObject::from_element_iter([
                    DataElement::new(
                        tags::PIXEL_SPACING,
                        VR::DS,
                        PrimitiveValue::from(ds_list(&self.spacing[1..])),
                    ),
                    DataElement::new(
                        tags::SLICE_THICKNESS,
                        VR::DS,
                        PrimitiveValue::from(ds(self.spacing[0])),
                    ),
                ])],
            ),
            seq(
                tags::PLANE_ORIENTATION_SEQUENCE,
                vec![item(
                    tags::IMAGE_ORIENTATION_PATIENT,
                    VR::DS,
                    ds_list(&self.iop),
                )],
            ),
        ]);
        if !per_frame_rescale {
            shared.put(seq(
                tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
                vec![rescale_item()],
            ));
        }
        // Frames in reverse slice order: assembly must sort by position, not frame number.
        let order: Vec<usize> = (0..self.slices).rev().collect();
        let per_frame: Vec<InMemDicomObject> = order
            .iter()
            .map(|&z| {
                let mut f = InMemDicomObject::from_element_iter([seq(
                    tags::PLANE_POSITION_SEQUENCE,
                    vec![item(
                        tags::IMAGE_POSITION_PATIENT,
                        VR::DS,
                        ds3(&self.position(z)),
                    )],
                )]);
                if per_frame_rescale {
                    f.put(seq(
                        tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
                        vec![rescale_item()],
                    ));
                }
                f
            })
            .collect();
        o.put(seq(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, vec![shared]));
        o.put(seq(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per_frame));
        let hu = self.hu();
        let mut px = Vec::with_capacity(hu.len());
        for &z in &order {
            px.extend(
                hu.slice(ndarray::s![z, .., ..])
                    .iter()
                    .map(|&v| self.stored(v)),
            );
        }
        o.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(px.into()),
        ));
        write_object(o, &self.transfer_syntax, path);
    }
}

pub fn write_object(o: InMemDicomObject, ts: &str, path: &Path) {
    let file = o
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(ts))
        .unwrap();
    file.write_to_file(path).unwrap();
}

pub fn ds(v: f64) -> String {
    // DS is at most 16 characters.
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    let s = if s.is_empty() || s == "-" { "0" } else { s };
    s.chars().take(16).collect()
}

pub fn ds_list(v: &[f64]) -> String {
    v.iter().map(|&x| ds(x)).collect::<Vec<_>>().join("\\")
}

pub fn ds3(p: &[f64; 3]) -> String {
    ds_list(p)
}

pub fn set_str(o: &mut InMemDicomObject, tag: dicom_core::Tag, vr: VR, v: &str) {
    o.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
}
