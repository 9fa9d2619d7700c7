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
    #[error("unexpected delimiter ({0:04X},{1:04X})")]
    UnexpectedDelimiter(u16, u16),
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

/// Walks the whole dataset in `r`: every defined length must fit in the bytes that follow,
/// every undefined-length sequence and item must be closed.
pub fn check(r: &mut impl Read, enc: Encoding) -> Result<(), LengthError> {
    let mut w = Walker { r, enc };
    match w.elements(0, End::Eof)? {
        Ended::Eof => Ok(()),
        Ended::Delimiter(t) => Err(LengthError::UnexpectedDelimiter(t.0, t.1)),
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
}

struct Walker<'a, R> {
    r: &'a mut R,
    enc: Encoding,
}

impl<R: Read> Walker<'_, R> {
    fn u16(&mut self, b: [u8; 2]) -> u16 {
        if self.enc.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    }

    fn u32(&mut self, b: [u8; 4]) -> u32 {
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
        if n < u64::from(len) {
            return Err(LengthError::Truncated(tag.0, tag.1, u64::from(len)));
        }
        Ok(())
    }

    /// Elements until `end` (the end of data, an item delimiter, a sequence delimiter).
    fn elements(&mut self, depth: u32, end: End) -> Result<Ended, LengthError> {
        if depth > MAX_DEPTH {
            return Err(LengthError::TooDeep);
        }
        loop {
            let mut t = [0u8; 4];
            if !self.fill(&mut t)? {
                return match end {
                    End::Eof => Ok(Ended::Eof),
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
                        match self.elements(depth + 1, End::Item)? {
                            Ended::Delimiter(ITEM_END) => {}
                            _ => return Err(LengthError::TruncatedHeader),
                        }
                    }
                    // A defined-length item (a nested dataset or a pixel fragment).
                    (ITEM, End::Sequence) => self.skip(tag, len)?,
                    _ => return Err(LengthError::UnexpectedDelimiter(tag.0, tag.1)),
                }
                continue;
            }
            let (len, is_un) = if self.enc.explicit_vr {
                let mut vr = [0u8; 2];
                self.need(&mut vr)?;
                if matches!(
                    &vr,
                    b"OB"
                        | b"OD"
                        | b"OF"
                        | b"OL"
                        | b"OV"
                        | b"OW"
                        | b"SQ"
                        | b"SV"
                        | b"UC"
                        | b"UN"
                        | b"UR"
                        | b"UT"
                        | b"UV"
                ) {
                    let mut l = [0u8; 6];
                    self.need(&mut l)?;
                    (self.u32([l[2], l[3], l[4], l[5]]), &vr == b"UN")
                } else {
                    let mut l = [0u8; 2];
                    self.need(&mut l)?;
                    (u32::from(self.u16(l)), false)
                }
            } else {
                let mut l = [0u8; 4];
                self.need(&mut l)?;
                (self.u32(l), false)
            };
            if len == UNDEFINED {
                // A sequence, or encapsulated pixel data: items until the sequence delimiter.
                // An undefined-length UN holds implicit VR little endian (PS3.5 §6.2.2).
                let outer = self.enc;
                if is_un {
                    self.enc = Encoding {
                        explicit_vr: false,
                        big_endian: false,
                    };
                }
                let ended = self.elements(depth + 1, End::Sequence);
                self.enc = outer;
                match ended? {
                    Ended::Delimiter(SEQUENCE_END) => {}
                    _ => return Err(LengthError::TruncatedHeader),
                }
            } else {
                // Defined length (a defined-length sequence too: its bytes must be there; its
                // items are not walked).
                self.skip(tag, len)?;
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
