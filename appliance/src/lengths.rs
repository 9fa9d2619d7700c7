//! Checks a received dataset's declared lengths against the bytes that follow, before any
//! parser sees it. dicom-rs sizes a value's buffer from its declared length and zero-fills it
//! before reading (`try_reserve_exact` then `resize`), so one element declaring 4 GB in a
//! 1 KB instance makes it touch 4 GB of memory; and the store reads only up to Pixel Data, so a
//! pixel element longer than the file would otherwise be acknowledged. This walk reads headers
//! and skips values through a reader, so nothing it allocates depends on a declared length.
//!
//! Written by hand: dicom-parser's token reader reads values (the allocation above) and has no
//! "headers only" mode.

use std::io::{self, Read};

/// Why a dataset's structure does not hold.
#[derive(Debug, thiserror::Error)]
pub enum LengthError {
    #[error("element ({0:04X},{1:04X}) declares {2} bytes but the data ends first")]
    Truncated(u16, u16, u64),
    #[error("the data ends inside an element header")]
    TruncatedHeader,
    #[error("sequences nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("not a DICOM Part 10 file (no DICM, or no file meta group)")]
    NotPart10,
    #[error("unexpected delimiter ({0:04X},{1:04X})")]
    UnexpectedDelimiter(u16, u16),
    #[error("element ({0:04X},{1:04X}) of {2} bytes is not a whole number of {3}-byte values")]
    PartialValue(u16, u16, u32, u32),
    #[error("reading the dataset: {0}")]
    Io(#[from] io::Error),
}

/// Real CT datasets nest a few levels (Enhanced CT: functional groups in sequences in items).
const MAX_DEPTH: u32 = 16;

const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_END: (u16, u16) = (0xFFFE, 0xE00D);
const SEQUENCE_END: (u16, u16) = (0xFFFE, 0xE0DD);
const UNDEFINED: u32 = u32::MAX;

/// How the dataset is encoded.
#[derive(Debug, Clone, Copy)]
pub struct Encoding {
    pub explicit_vr: bool,
    pub big_endian: bool,
}

impl Encoding {
    /// The encoding of a transfer syntax UID (deflate is inflated by the caller first).
    pub fn of(transfer_syntax: &str) -> Encoding {
        let ts = transfer_syntax.trim_end_matches(['\0', ' ']);
        Encoding {
            explicit_vr: ts != "1.2.840.10008.1.2",
            big_endian: ts == "1.2.840.10008.1.2.2",
        }
    }
}

/// Walks the whole dataset in `r`: every defined length must fit in the bytes that follow
/// and in the sequence or item that holds it, every undefined-length sequence and item must be
/// closed.
pub fn check(r: &mut impl Read, enc: Encoding) -> Result<(), LengthError> {
    let mut w = Walker { r, enc, pos: 0 };
    match w.elements(0, End::Eof, None)? {
        Ended::Eof => Ok(()),
        Ended::Delimiter(t) => Err(LengthError::UnexpectedDelimiter(t.0, t.1)),
        Ended::Bound => Ok(()),
    }
}

/// The same walk over a DICOM file on disk (preamble, `DICM`, file meta group, dataset), for
/// files read by `cacd score` and the assembler rather than received.
pub fn check_file(path: &std::path::Path) -> Result<(), LengthError> {
    let f = std::fs::File::open(path)?;
    let size = f.metadata()?.len();
    let mut r = io::BufReader::with_capacity(64 * 1024, f);
    // With the 128-byte preamble, or without it (dicom-rs accepts both).
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)
        .map_err(|_| LengthError::TruncatedHeader)?;
    let mut meta_at = 4u64;
    if &magic != b"DICM" {
        let mut rest = [0u8; 128];
        r.read_exact(&mut rest)
            .map_err(|_| LengthError::TruncatedHeader)?;
        if &rest[124..] != b"DICM" {
            return Err(LengthError::NotPart10);
        }
        meta_at = 132;
    }
    // File meta: explicit VR little endian, group 0002, led by its group length.
    let mut gl = [0u8; 12];
    r.read_exact(&mut gl)
        .map_err(|_| LengthError::TruncatedHeader)?;
    if gl[0..4] != [2, 0, 0, 0] {
        return Err(LengthError::NotPart10);
    }
    let group = u64::from(u32::from_le_bytes([gl[8], gl[9], gl[10], gl[11]]));
    if group > size.saturating_sub(meta_at + 12) || group > 64 * 1024 {
        return Err(LengthError::Truncated(0x0002, 0x0000, group));
    }
    let mut meta = vec![0u8; group as usize];
    r.read_exact(&mut meta)?;
    // dicom-rs reads each meta element by its own declared length too: all must fit the group.
    let ts = meta_transfer_syntax(&meta).ok_or(LengthError::NotPart10)?;
    if ts == "1.2.840.10008.1.2.1.99" {
        let mut inflated = flate2::read::DeflateDecoder::new(r).take(4 << 30);
        check(&mut inflated, Encoding::of(&ts))
    } else {
        check(&mut r, Encoding::of(&ts))
    }
}

/// (0002,0010) from the file meta group's bytes, when every meta element fits in the group
/// exactly (None otherwise).
fn meta_transfer_syntax(meta: &[u8]) -> Option<String> {
    let mut i = 0;
    let mut ts = None;
    while i < meta.len() {
        if i + 8 > meta.len() {
            return None;
        }
        let tag = (
            u16::from_le_bytes([meta[i], meta[i + 1]]),
            u16::from_le_bytes([meta[i + 2], meta[i + 3]]),
        );
        let vr = [meta[i + 4], meta[i + 5]];
        let (len, at) = if is_short_vr(&vr) {
            (
                u16::from_le_bytes([meta[i + 6], meta[i + 7]]) as usize,
                i + 8,
            )
        } else {
            let b = meta.get(i + 8..i + 12)?;
            (
                u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize,
                i + 12,
            )
        };
        let value = meta.get(at..at.checked_add(len)?)?;
        if tag.0 != 0x0002 {
            return None;
        }
        if tag == (0x0002, 0x0010) {
            ts = Some(
                String::from_utf8_lossy(value)
                    .trim_end_matches(['\0', ' '])
                    .to_string(),
            );
        }
        i = at + len;
    }
    ts
}

/// VRs with a 2-byte length in explicit VR encodings (PS3.5 Table 7.1-2). Every other code,
/// unknown ones included, has 2 reserved bytes and a 4-byte length (PS3.5 §6.2: an unknown VR
/// is read as UN), which is also how dicom-rs reads them.
fn is_short_vr(vr: &[u8; 2]) -> bool {
    matches!(
        vr,
        b"AE"
            | b"AS"
            | b"AT"
            | b"CS"
            | b"DA"
            | b"DS"
            | b"DT"
            | b"FL"
            | b"FD"
            | b"IS"
            | b"LO"
            | b"LT"
            | b"PN"
            | b"SH"
            | b"SL"
            | b"SS"
            | b"ST"
            | b"TM"
            | b"UI"
            | b"UL"
            | b"US"
    )
}

/// A tag's VR in the standard dictionary.
fn standard_vr(tag: (u16, u16)) -> Option<dicom_core::VR> {
    use dicom_core::dictionary::DataDictionary;
    dicom_dictionary_std::StandardDataDictionary
        .by_tag(dicom_core::Tag(tag.0, tag.1))
        .map(|e| e.vr.relaxed())
}

/// The two-letter code of a VR.
fn vr_code(vr: dicom_core::VR) -> [u8; 2] {
    match vr.to_string().as_bytes() {
        [a, b] => [*a, *b],
        _ => *b"UN",
    }
}

/// The size of one value of a binary VR. dicom-rs reads `len / size` values of these and
/// leaves any remainder unread, so the next header is read out of step (where a garbage
/// length then sizes an allocation): such a length is refused.
fn value_size(vr: &[u8; 2]) -> Option<u32> {
    match vr {
        b"US" | b"SS" | b"OW" => Some(2),
        b"UL" | b"SL" | b"FL" | b"AT" | b"OF" | b"OL" => Some(4),
        b"FD" | b"SV" | b"UV" | b"OD" | b"OV" => Some(8),
        _ => None,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum End {
    Eof,
    Item,
    Sequence,
}

enum Ended {
    Eof,
    Delimiter((u16, u16)),
    /// The enclosing defined length was used up exactly.
    Bound,
}

struct Walker<'a, R> {
    r: &'a mut R,
    enc: Encoding,
    /// Bytes consumed so far.
    pos: u64,
}

impl<R: Read> Walker<'_, R> {
    fn u16(&self, b: [u8; 2]) -> u16 {
        if self.enc.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    }

    fn u32(&self, b: [u8; 4]) -> u32 {
        if self.enc.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }

    /// Reads exactly `buf.len()` bytes; Ok(false) on a clean end of data before the first.
    fn fill(&mut self, buf: &mut [u8]) -> Result<bool, LengthError> {
        let mut got = 0;
        while got < buf.len() {
            match self.r.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err(LengthError::TruncatedHeader),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.pos += buf.len() as u64;
        Ok(true)
    }

    fn need(&mut self, buf: &mut [u8]) -> Result<(), LengthError> {
        if self.fill(buf)? {
            Ok(())
        } else {
            Err(LengthError::TruncatedHeader)
        }
    }

    fn skip(&mut self, tag: (u16, u16), len: u32) -> Result<(), LengthError> {
        let n = io::copy(&mut self.r.take(u64::from(len)), &mut io::sink())?;
        self.pos += n;
        if n < u64::from(len) {
            return Err(LengthError::Truncated(tag.0, tag.1, u64::from(len)));
        }
        Ok(())
    }

    /// The end of a value of `len` bytes starting here, checked against the enclosing bound.
    fn value_end(&self, tag: (u16, u16), len: u32, bound: Option<u64>) -> Result<u64, LengthError> {
        let end = self.pos + u64::from(len);
        if bound.is_some_and(|b| end > b) {
            return Err(LengthError::Truncated(tag.0, tag.1, u64::from(len)));
        }
        Ok(end)
    }

    /// Elements until `end` (the end of data, an item delimiter, a sequence delimiter) or,
    /// inside a defined-length container, until its `bound` (an absolute position).
    fn elements(&mut self, depth: u32, end: End, bound: Option<u64>) -> Result<Ended, LengthError> {
        if depth > MAX_DEPTH {
            return Err(LengthError::TooDeep);
        }
        loop {
            if bound.is_some_and(|b| self.pos == b) {
                return Ok(Ended::Bound);
            }
            let mut t = [0u8; 4];
            if !self.fill(&mut t)? {
                return match (end, bound) {
                    (End::Eof, None) => Ok(Ended::Eof),
                    _ => Err(LengthError::TruncatedHeader),
                };
            }
            let tag = (self.u16([t[0], t[1]]), self.u16([t[2], t[3]]));
            if tag.0 == 0xFFFE {
                // Items and delimiters have no VR in any encoding.
                let mut l = [0u8; 4];
                self.need(&mut l)?;
                let len = self.u32(l);
                match (tag, end) {
                    (ITEM_END, End::Item) | (SEQUENCE_END, End::Sequence) => {
                        return Ok(Ended::Delimiter(tag))
                    }
                    (ITEM, End::Sequence) if len == UNDEFINED => {
                        match self.elements(depth + 1, End::Item, bound)? {
                            Ended::Delimiter(ITEM_END) => {}
                            _ => return Err(LengthError::TruncatedHeader),
                        }
                    }
                    // A defined-length item: a nested dataset, walked within its length.
                    (ITEM, End::Sequence) => {
                        let item_end = self.value_end(tag, len, bound)?;
                        match self.elements(depth + 1, End::Item, Some(item_end))? {
                            Ended::Bound => {}
                            _ => return Err(LengthError::UnexpectedDelimiter(tag.0, tag.1)),
                        }
                    }
                    _ => return Err(LengthError::UnexpectedDelimiter(tag.0, tag.1)),
                }
                continue;
            }
            let (len, vr) = if self.enc.explicit_vr {
                let mut vr = [0u8; 2];
                self.need(&mut vr)?;
                if is_short_vr(&vr) {
                    let mut l = [0u8; 2];
                    self.need(&mut l)?;
                    (u32::from(self.u16(l)), Some(vr))
                } else {
                    let mut l = [0u8; 6];
                    self.need(&mut l)?;
                    (self.u32([l[2], l[3], l[4], l[5]]), Some(vr))
                }
            } else {
                let mut l = [0u8; 4];
                self.need(&mut l)?;
                (self.u32(l), None)
            };
            if len == UNDEFINED {
                if tag == (0x7FE0, 0x0010) {
                    // Encapsulated pixel data: fragments are raw bytes, not datasets.
                    self.fragments(bound)?;
                    continue;
                }
                // A sequence: items until the sequence delimiter. An undefined-length UN holds
                // implicit VR little endian (PS3.5 §6.2.2).
                let outer = self.enc;
                if vr == Some(*b"UN") {
                    self.enc = Encoding {
                        explicit_vr: false,
                        big_endian: false,
                    };
                }
                let ended = self.elements(depth + 1, End::Sequence, bound);
                self.enc = outer;
                match ended? {
                    Ended::Delimiter(SEQUENCE_END) => {}
                    _ => return Err(LengthError::TruncatedHeader),
                }
                continue;
            }
            let value_end = self.value_end(tag, len, bound)?;
            // Implicit VR: the dictionary's VR, as dicom-rs reads it.
            let vr = vr.or_else(|| standard_vr(tag).map(vr_code));
            if let Some(size) = vr.as_ref().and_then(value_size) {
                if len % size != 0 {
                    return Err(LengthError::PartialValue(tag.0, tag.1, len, size));
                }
            }
            let is_sq = vr.as_ref() == Some(b"SQ");
            if is_sq && len > 0 {
                // A defined-length sequence: its items, each within it.
                match self.elements(depth + 1, End::Sequence, Some(value_end))? {
                    Ended::Bound => {}
                    _ => return Err(LengthError::UnexpectedDelimiter(tag.0, tag.1)),
                }
            } else {
                self.skip(tag, len)?;
            }
        }
    }

    /// The items of encapsulated pixel data (offset table, fragments) up to the delimiter.
    fn fragments(&mut self, bound: Option<u64>) -> Result<(), LengthError> {
        loop {
            let mut h = [0u8; 8];
            self.need(&mut h)?;
            let tag = (self.u16([h[0], h[1]]), self.u16([h[2], h[3]]));
            let len = self.u32([h[4], h[5], h[6], h[7]]);
            match tag {
                SEQUENCE_END => return Ok(()),
                ITEM if len != UNDEFINED => {
                    self.value_end(tag, len, bound)?;
                    self.skip(tag, len)?;
                }
                _ => return Err(LengthError::UnexpectedDelimiter(tag.0, tag.1)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LE: Encoding = Encoding {
        explicit_vr: true,
        big_endian: false,
    };
    const IMPLICIT: Encoding = Encoding {
        explicit_vr: false,
        big_endian: false,
    };

    fn short(tag: (u16, u16), vr: &[u8; 2], v: &[u8]) -> Vec<u8> {
        let mut b = tag.0.to_le_bytes().to_vec();
        b.extend(tag.1.to_le_bytes());
        b.extend(vr);
        b.extend((v.len() as u16).to_le_bytes());
        b.extend(v);
        b
    }

    fn long(tag: (u16, u16), vr: &[u8; 2], len: u32, v: &[u8]) -> Vec<u8> {
        let mut b = tag.0.to_le_bytes().to_vec();
        b.extend(tag.1.to_le_bytes());
        b.extend(vr);
        b.extend([0, 0]);
        b.extend(len.to_le_bytes());
        b.extend(v);
        b
    }

    fn raw(tag: (u16, u16), len: u32) -> Vec<u8> {
        let mut b = tag.0.to_le_bytes().to_vec();
        b.extend(tag.1.to_le_bytes());
        b.extend(len.to_le_bytes());
        b
    }

    #[test]
    fn a_well_formed_dataset_with_sequences_and_fragments_passes() {
        let mut d = short((0x0008, 0x0060), b"CS", b"CT");
        // Undefined-length SQ with an undefined-length item and a defined-length item.
        d.extend(long((0x5200, 0x9229), b"SQ", UNDEFINED, &[]));
        d.extend(raw(ITEM, UNDEFINED));
        d.extend(short((0x0018, 0x0050), b"DS", b"1.0 "));
        d.extend(raw(ITEM_END, 0));
        let inner = short((0x0018, 0x0050), b"DS", b"2.0 ");
        d.extend(raw(ITEM, inner.len() as u32));
        d.extend(inner);
        d.extend(raw(SEQUENCE_END, 0));
        // Encapsulated pixel data: offset table and one fragment.
        d.extend(long((0x7FE0, 0x0010), b"OB", UNDEFINED, &[]));
        d.extend(raw(ITEM, 0));
        d.extend(raw(ITEM, 4));
        d.extend([1, 2, 3, 4]);
        d.extend(raw(SEQUENCE_END, 0));
        check(&mut d.as_slice(), LE).unwrap();
    }

    #[test]
    fn a_pixel_element_longer_than_the_data_is_refused() {
        let mut d = short((0x0008, 0x0060), b"CS", b"CT");
        d.extend(long((0x7FE0, 0x0010), b"OW", 0xFFFF_FFF0, &[0x55; 64]));
        let e = check(&mut d.as_slice(), LE).unwrap_err();
        assert!(
            matches!(e, LengthError::Truncated(0x7FE0, 0x0010, _)),
            "{e}"
        );
    }

    #[test]
    fn implicit_vr_lengths_are_checked_too() {
        let mut d = raw((0x0010, 0x0010), 0x7FFF_FFFF);
        d.extend(b"Doe^John");
        assert!(check(&mut d.as_slice(), IMPLICIT).is_err());
        let mut ok = raw((0x0010, 0x0010), 8);
        ok.extend(b"Doe^John");
        check(&mut ok.as_slice(), IMPLICIT).unwrap();
    }

    #[test]
    fn unclosed_sequences_and_cut_headers_are_refused() {
        let mut d = long((0x5200, 0x9229), b"SQ", UNDEFINED, &[]);
        d.extend(raw(ITEM, UNDEFINED));
        assert!(check(&mut d.as_slice(), LE).is_err());
        let h = short((0x0008, 0x0060), b"CS", b"CT");
        assert!(check(&mut &h[..5], LE).is_err());
        assert!(check(&mut raw(SEQUENCE_END, 0).as_slice(), LE).is_err());
    }

    /// Found by fuzzing: an unknown VR code has a 4-byte length (dicom-rs reads it as UN).
    #[test]
    fn an_unknown_vr_is_read_with_a_long_length() {
        let d = long((0x0009, 0x0010), b"\0\0", 0xFF00_0000, &[1, 2, 3, 4]);
        assert!(matches!(
            check(&mut d.as_slice(), LE),
            Err(LengthError::Truncated(0x0009, 0x0010, _))
        ));
    }

    /// Found by fuzzing: a length inside a defined-length sequence must fit in its item and
    /// sequence, not merely in the file.
    #[test]
    fn lengths_inside_defined_length_sequences_are_bounded_by_them() {
        let inner = short((0x0018, 0x0050), b"DS", b"1.0 ");
        let mut item = raw(ITEM, inner.len() as u32);
        item.extend(&inner);
        let mut ok = long((0x5200, 0x9230), b"SQ", item.len() as u32, &item);
        ok.extend(short((0x0008, 0x0060), b"CS", b"CT"));
        check(&mut ok.as_slice(), LE).unwrap();

        // The same item claiming 4 bytes more than its sequence, with data after it.
        let mut lying_item = raw(ITEM, inner.len() as u32 + 4);
        lying_item.extend(&inner);
        let mut bad = long(
            (0x5200, 0x9230),
            b"SQ",
            lying_item.len() as u32,
            &lying_item,
        );
        bad.extend(short((0x0008, 0x0060), b"CS", b"CT"));
        assert!(check(&mut bad.as_slice(), LE).is_err());

        // An element inside the item declaring far more than the item holds.
        let mut nested = raw(ITEM, 12);
        nested.extend(long((0x0018, 0x9073), b"UN", 0x9000_0000, &[]));
        let mut bad = long((0x5200, 0x9230), b"SQ", nested.len() as u32, &nested);
        bad.extend(vec![0u8; 64]);
        assert!(check(&mut bad.as_slice(), LE).is_err());
    }

    /// A binary value whose length is not a whole number of values (a UL of 1 byte): dicom-rs
    /// reads none and the next header out of step — found by the `association` fuzz target in
    /// a command set, where the misread header then declared 2 GiB.
    #[test]
    fn partial_binary_values_are_refused() {
        let mut cmd = 0u32.to_le_bytes().to_vec(); // (0000,0000) CommandGroupLength, UL...
        cmd.extend(1u32.to_le_bytes()); // ...of one byte
        cmd.push(0);
        cmd.extend([0, 0, 0, 1, 0, 0, 0, 0x80]); // what dicom-rs would read next
        assert!(matches!(
            check(&mut &cmd[..], IMPLICIT),
            Err(LengthError::PartialValue(0, 0, 1, 4))
        ));
        let rows = short((0x0028, 0x0010), b"US", &[1, 2, 3]);
        assert!(matches!(
            check(&mut &rows[..], LE),
            Err(LengthError::PartialValue(0x0028, 0x0010, 3, 2))
        ));
        let fine = short((0x0028, 0x0010), b"US", &[0, 2]);
        assert!(check(&mut &fine[..], LE).is_ok());
        // Implicit VR, by the dictionary: Rows is US.
        let mut rows = 0x0028u16.to_le_bytes().to_vec();
        rows.extend(0x0010u16.to_le_bytes());
        rows.extend(3u32.to_le_bytes());
        rows.extend([1, 2, 3]);
        assert!(check(&mut &rows[..], IMPLICIT).is_err());
    }

    #[test]
    fn implicit_vr_standard_sequences_are_walked() {
        // (0008,1115) Referenced Series Sequence, defined length, implicit VR: its item claims
        // more than the sequence holds.
        let mut item = raw(ITEM, 100);
        item.extend(raw((0x0020, 0x000E), 4));
        item.extend(b"1.2\0");
        let mut d = raw((0x0008, 0x1115), item.len() as u32);
        d.extend(&item);
        d.extend(vec![0u8; 200]);
        assert!(check(&mut d.as_slice(), IMPLICIT).is_err());
    }

    #[test]
    fn files_are_checked_after_their_meta_group() {
        let dir = tempfile::tempdir().unwrap();
        let mut meta = short((0x0002, 0x0010), b"UI", b"1.2.840.10008.1.2.1\0");
        meta.extend(short((0x0002, 0x0003), b"UI", b"1.2.3\0"));
        let mut file = vec![0u8; 128];
        file.extend(b"DICM");
        file.extend(short(
            (0x0002, 0x0000),
            b"UL",
            &(meta.len() as u32).to_le_bytes(),
        ));
        file.extend(&meta);
        let mut good = file.clone();
        good.extend(short((0x0008, 0x0060), b"CS", b"CT"));
        std::fs::write(dir.path().join("good.dcm"), &good).unwrap();
        check_file(&dir.path().join("good.dcm")).unwrap();
        let mut bad = file;
        bad.extend(long((0x7FE0, 0x0010), b"OW", 0xFFFF_FFF0, &[0; 8]));
        std::fs::write(dir.path().join("bad.dcm"), &bad).unwrap();
        assert!(check_file(&dir.path().join("bad.dcm")).is_err());
        std::fs::write(dir.path().join("no.dcm"), b"hello").unwrap();
        // Found by fuzzing: a meta element declaring more than its group holds.
        let mut lying_meta = vec![0u8; 128];
        lying_meta.extend(b"DICM");
        let mut meta = short((0x0002, 0x0010), b"UI", b"1.2.840.10008.1.2.1\0");
        meta.extend(long((0x0002, 0x0001), b"OB", 0xD000_0000, &[0, 1]));
        lying_meta.extend(short(
            (0x0002, 0x0000),
            b"UL",
            &(meta.len() as u32).to_le_bytes(),
        ));
        lying_meta.extend(&meta);
        lying_meta.extend(vec![0u8; 100]);
        std::fs::write(dir.path().join("meta.dcm"), &lying_meta).unwrap();
        assert!(check_file(&dir.path().join("meta.dcm")).is_err());
        assert!(check_file(&dir.path().join("no.dcm")).is_err());
    }

    #[test]
    fn nesting_is_bounded() {
        let mut d = Vec::new();
        for _ in 0..(MAX_DEPTH + 2) {
            d.extend(long((0x5200, 0x9229), b"SQ", UNDEFINED, &[]));
            d.extend(raw(ITEM, UNDEFINED));
        }
        assert!(matches!(
            check(&mut d.as_slice(), LE),
            Err(LengthError::TooDeep)
        ));
    }
}
