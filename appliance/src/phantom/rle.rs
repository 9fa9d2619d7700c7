//! DICOM RLE Lossless encoder (PS3.5 Annex G), written by hand because dicom-rs only decodes
//! RLE. 16-bit single-sample frames: two segments (high bytes, then low bytes), each row
//! PackBits-encoded on its own, segments padded to even length, 64-byte header.

/// PackBits-encodes one row of bytes onto `out`: runs of 3+ equal bytes become replicate runs
/// `(1 - n) as i8, byte`, everything else literal runs `n - 1, bytes…` (n ≤ 128).
fn pack_row(row: &[u8], out: &mut Vec<u8>) {
    let n = row.len();
    let mut i = 0;
    while i < n {
        let mut run = 1;
        while i + run < n && run < 128 && row[i + run] == row[i] {
            run += 1;
        }
        if run >= 3 {
            out.push((257 - run) as u8);
            out.push(row[i]);
            i += run;
            continue;
        }
        // Literal: up to the next run of three or 128 bytes.
        let start = i;
        let mut len = 0;
        while i < n && len < 128 {
            if i + 2 < n && row[i] == row[i + 1] && row[i] == row[i + 2] {
                break;
            }
            i += 1;
            len += 1;
        }
        out.push((len - 1) as u8);
        out.extend_from_slice(&row[start..start + len]);
    }
}

/// Encodes one frame of 16-bit samples (`rows × cols`, row-major, stored values as two's
/// complement or unsigned — RLE is byte-level and does not care) into an RLE fragment.
pub fn encode_frame_u16(samples: &[u16], rows: usize, cols: usize) -> Vec<u8> {
    let mut segments: Vec<Vec<u8>> = Vec::with_capacity(2);
    let mut row_bytes = vec![0u8; cols];
    for shift in [8u32, 0u32] {
        let mut seg = Vec::with_capacity(rows * cols / 2);
        for r in 0..rows {
            let src = &samples[r * cols..(r + 1) * cols];
            for (b, s) in row_bytes.iter_mut().zip(src) {
                *b = (s >> shift) as u8;
            }
            pack_row(&row_bytes, &mut seg);
        }
        if seg.len() % 2 == 1 {
            seg.push(0);
        }
        segments.push(seg);
    }
    let mut out = Vec::with_capacity(64 + segments.iter().map(Vec::len).sum::<usize>());
    let mut header = [0u32; 16];
    header[0] = segments.len() as u32;
    let mut offset = 64u32;
    for (k, s) in segments.iter().enumerate() {
        header[k + 1] = offset;
        offset += s.len() as u32;
    }
    for h in header {
        out.extend_from_slice(&h.to_le_bytes());
    }
    for s in segments {
        out.extend(s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference PackBits decoder for the unit tests below.
    fn unpack(mut data: &[u8], expected: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while out.len() < expected && !data.is_empty() {
            let h = data[0] as i8;
            data = &data[1..];
            if h >= 0 {
                let n = h as usize + 1;
                out.extend_from_slice(&data[..n]);
                data = &data[n..];
            } else if h != -128 {
                let n = (1 - h as i32) as usize;
                out.extend(std::iter::repeat_n(data[0], n));
                data = &data[1..];
            }
        }
        out
    }

    #[test]
    fn packbits_round_trips_edge_cases() {
        let cases: Vec<Vec<u8>> = vec![
            vec![1],
            vec![1, 1],
            vec![1, 1, 1],
            vec![5; 300],
            (0..=255u8).cycle().take(700).collect(),
            vec![1, 2, 2, 3, 3, 3, 4, 4, 4, 4, 5],
        ];
        for c in cases {
            let mut enc = Vec::new();
            pack_row(&c, &mut enc);
            assert_eq!(unpack(&enc, c.len()), c);
        }
    }

    #[test]
    fn frame_layout() {
        let px: Vec<u16> = (0..12u16).map(|v| v * 300).collect();
        let f = encode_frame_u16(&px, 3, 4);
        assert_eq!(u32::from_le_bytes([f[0], f[1], f[2], f[3]]), 2);
        assert_eq!(u32::from_le_bytes([f[4], f[5], f[6], f[7]]), 64);
        let off2 = u32::from_le_bytes([f[8], f[9], f[10], f[11]]) as usize;
        assert_eq!(off2 % 2, 0);
        let hi = unpack(&f[64..off2], 12);
        let lo = unpack(&f[off2..], 12);
        let back: Vec<u16> = hi
            .iter()
            .zip(&lo)
            .map(|(h, l)| (*h as u16) << 8 | *l as u16)
            .collect();
        assert_eq!(back, px);
    }
}
