//! Upper-layer PDUs on the wire (PS3.8 §9.3), read with every declared length checked before
//! a byte of it is buffered, and the few PDUs the SCP writes.
//!
//! Written by hand rather than with dicom-ul's reader: dicom-ul reads a whole PDU into memory
//! before it compares the length with its limit (a header declaring 4 GiB made the daemon
//! buffer whatever followed), and it has no per-state limits. Here the 6-byte header is read
//! alone, checked against the limit of what may come in the current phase ([`admit`]), and
//! only then is the body read, into one buffer per connection that never grows past that
//! limit.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// PDU types (PS3.8 Table 9-11).
pub const ASSOCIATE_RQ: u8 = 0x01;
pub const ASSOCIATE_AC: u8 = 0x02;
pub const ASSOCIATE_RJ: u8 = 0x03;
pub const P_DATA_TF: u8 = 0x04;
pub const RELEASE_RQ: u8 = 0x05;
pub const RELEASE_RP: u8 = 0x06;
pub const ABORT: u8 = 0x07;

/// The fixed fields of an A-ASSOCIATE-RQ before its items.
pub const ASSOCIATE_RQ_FIXED: u32 = 68;

/// A-ABORT reasons with the service provider as source (PS3.8 Table 9-26).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AbortReason {
    NotSpecified = 0,
    UnrecognizedPdu = 1,
    UnexpectedPdu = 2,
    UnrecognizedParameter = 4,
    UnexpectedParameter = 5,
    InvalidParameter = 6,
}

/// Something a peer sent that breaks the protocol or a limit: the association (or the
/// connection that would have become one) ends with an A-ABORT carrying [`Violation::reason`],
/// and [`Violation::metric`] is counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("PDU type 0x{0:02X} is not a DICOM PDU")]
    UnknownPdu(u8),
    #[error("{0} not expected now")]
    UnexpectedPdu(&'static str),
    #[error("{what} declares {declared} bytes, over the limit of {limit}")]
    TooLong {
        what: &'static str,
        declared: u64,
        limit: u64,
    },
    #[error("{what} declares {declared} bytes but only {left} are left in its {within}")]
    Overrun {
        what: &'static str,
        within: &'static str,
        declared: u64,
        left: u64,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unexpected(&'static str),
}

impl Violation {
    pub fn reason(&self) -> AbortReason {
        match self {
            Violation::UnknownPdu(_) => AbortReason::UnrecognizedPdu,
            Violation::UnexpectedPdu(_) => AbortReason::UnexpectedPdu,
            Violation::Unexpected(_) => AbortReason::UnexpectedParameter,
            Violation::TooLong { .. } | Violation::Overrun { .. } | Violation::Invalid(_) => {
                AbortReason::InvalidParameter
            }
        }
    }

    /// The `reason` label of `cacd_receive_violations_total`.
    pub fn metric(&self) -> &'static str {
        match self {
            Violation::UnknownPdu(_) => "unknown_pdu_type",
            Violation::UnexpectedPdu(_) => "unexpected_pdu",
            Violation::TooLong { what, .. } => match *what {
                "A-ASSOCIATE-RQ" => "associate_rq_too_long",
                "P-DATA-TF" => "pdu_too_long",
                "command set" => "command_too_long",
                "data set" => "dataset_too_long",
                _ => "too_long",
            },
            Violation::Overrun { .. } => "item_length",
            Violation::Invalid(_) => "invalid_parameter",
            Violation::Unexpected(_) => "unexpected_fragment",
        }
    }
}

/// Where the connection stands, for [`admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before the association: only an A-ASSOCIATE-RQ may come.
    Request,
    /// Established: P-DATA-TF, A-RELEASE-RQ, A-ABORT.
    Established,
}

/// What may be read in each phase.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_associate_rq: u32,
    pub max_p_data: u32,
}

/// A PDU header: type and declared length of what follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    pub len: u32,
}

impl Header {
    pub fn parse(b: [u8; 6]) -> Header {
        Header {
            kind: b[0],
            len: u32::from_be_bytes([b[2], b[3], b[4], b[5]]),
        }
    }
}

fn name(kind: u8) -> &'static str {
    match kind {
        ASSOCIATE_RQ => "A-ASSOCIATE-RQ",
        ASSOCIATE_AC => "A-ASSOCIATE-AC",
        ASSOCIATE_RJ => "A-ASSOCIATE-RJ",
        P_DATA_TF => "P-DATA-TF",
        RELEASE_RQ => "A-RELEASE-RQ",
        RELEASE_RP => "A-RELEASE-RP",
        _ => "A-ABORT",
    }
}

/// Whether a PDU with this header may be read now: its type expected in `phase` and its
/// length within that type's limit. Nothing of the body has been read when this is asked.
pub fn admit(h: Header, phase: Phase, limits: &Limits) -> Result<(), Violation> {
    if !(ASSOCIATE_RQ..=ABORT).contains(&h.kind) {
        return Err(Violation::UnknownPdu(h.kind));
    }
    let too_long = |limit: u32| Violation::TooLong {
        what: name(h.kind),
        declared: u64::from(h.len),
        limit: u64::from(limit),
    };
    match (phase, h.kind) {
        (Phase::Request, ASSOCIATE_RQ) => {
            if h.len > limits.max_associate_rq {
                return Err(too_long(limits.max_associate_rq));
            }
            if h.len < ASSOCIATE_RQ_FIXED {
                return Err(Violation::Invalid(format!(
                    "A-ASSOCIATE-RQ of {} bytes is shorter than its fixed fields",
                    h.len
                )));
            }
            Ok(())
        }
        (Phase::Established, P_DATA_TF) => {
            if h.len > limits.max_p_data {
                return Err(too_long(limits.max_p_data));
            }
            // At least one PDV: its 4-byte length and 2-byte header.
            if h.len < 6 {
                return Err(Violation::Invalid(format!(
                    "P-DATA-TF of {} bytes holds no PDV",
                    h.len
                )));
            }
            Ok(())
        }
        (Phase::Established, RELEASE_RQ | ABORT) => match h.len {
            4 => Ok(()),
            n => Err(Violation::Invalid(format!(
                "{} of {n} bytes (4 expected)",
                name(h.kind)
            ))),
        },
        (_, kind) => Err(Violation::UnexpectedPdu(name(kind))),
    }
}

/// Why reading a PDU stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed the connection between PDUs.
    #[error("connection closed")]
    Closed,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The peer closed the connection inside a PDU.
    #[error("connection closed inside a PDU")]
    Truncated,
    #[error(transparent)]
    Violation(#[from] Violation),
    #[error("reading: {0}")]
    Io(std::io::Error),
}

/// Reads PDUs from one connection into a single buffer that grows at most to the largest
/// length [`admit`] let through.
pub struct PduReader<R> {
    io: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> PduReader<R> {
    pub fn new(io: R) -> PduReader<R> {
        PduReader {
            io,
            buf: Vec::new(),
        }
    }

    /// Reads the next PDU header, waiting up to `wait` for its first byte and up to `read`
    /// for the rest of the PDU, checks it with [`admit`], then reads its body. Returns the
    /// header; the body is [`PduReader::body`] until the next call.
    pub async fn next(
        &mut self,
        phase: Phase,
        limits: &Limits,
        wait: Duration,
        read: Duration,
    ) -> Result<Header, ReadError> {
        let mut head = [0u8; 6];
        // The first byte within `wait` (idle between messages), the rest within `read`.
        let first = tokio::time::timeout(wait, self.io.read(&mut head[..1]))
            .await
            .map_err(|_| ReadError::Timeout(wait))?
            .map_err(ReadError::Io)?;
        if first == 0 {
            return Err(ReadError::Closed);
        }
        let rest = async {
            self.io.read_exact(&mut head[1..]).await.map_err(eof)?;
            let h = Header::parse(head);
            admit(h, phase, limits)?;
            self.buf.clear();
            // Exact: the length was checked against the limit just above.
            self.buf.resize(h.len as usize, 0);
            self.io.read_exact(&mut self.buf).await.map_err(eof)?;
            Ok::<Header, ReadError>(h)
        };
        tokio::time::timeout(read, rest)
            .await
            .map_err(|_| ReadError::Timeout(read))?
    }

    /// The body of the PDU last read.
    pub fn body(&self) -> &[u8] {
        &self.buf
    }

    /// Takes the body out (to use it while the session is borrowed); give it back with
    /// [`PduReader::restore`] so the buffer is reused.
    pub fn take_body(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    pub fn restore(&mut self, buf: Vec<u8>) {
        self.buf = buf;
    }

    /// The buffer's capacity now (for the memory bound's tests).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    pub fn into_inner(self) -> R {
        self.io
    }
}

fn eof(e: std::io::Error) -> ReadError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ReadError::Truncated
    } else {
        ReadError::Io(e)
    }
}

/// A-ABORT from the service provider with `reason`.
pub fn abort(reason: AbortReason) -> [u8; 10] {
    [ABORT, 0, 0, 0, 0, 4, 0, 0, 2, reason as u8]
}

/// A-RELEASE-RP.
pub fn release_rp() -> [u8; 10] {
    [RELEASE_RP, 0, 0, 0, 0, 4, 0, 0, 0, 0]
}

/// A-ASSOCIATE-RJ (PS3.8 Table 9-21).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    /// 1 permanent, 2 transient.
    pub result: u8,
    /// 1 service user, 2 service provider (ACSE), 3 service provider (presentation).
    pub source: u8,
    pub reason: u8,
}

impl Reject {
    pub const CALLED_AE_NOT_RECOGNIZED: Reject = Reject {
        result: 1,
        source: 1,
        reason: 7,
    };
    pub const CALLING_AE_NOT_RECOGNIZED: Reject = Reject {
        result: 1,
        source: 1,
        reason: 3,
    };
    pub const APPLICATION_CONTEXT_NOT_SUPPORTED: Reject = Reject {
        result: 1,
        source: 1,
        reason: 2,
    };
    pub const PROTOCOL_VERSION_NOT_SUPPORTED: Reject = Reject {
        result: 1,
        source: 2,
        reason: 2,
    };
    pub const LOCAL_LIMIT_EXCEEDED: Reject = Reject {
        result: 2,
        source: 3,
        reason: 2,
    };

    pub fn pdu(&self) -> [u8; 10] {
        [
            ASSOCIATE_RJ,
            0,
            0,
            0,
            0,
            4,
            0,
            self.result,
            self.source,
            self.reason,
        ]
    }
}

/// One P-DATA-TF with a single, last command fragment (our DIMSE responses are small).
pub fn p_data_command(pc: u8, command: &[u8]) -> Vec<u8> {
    let pdv_len = command.len() as u32 + 2;
    let mut v = Vec::with_capacity(command.len() + 12);
    v.push(P_DATA_TF);
    v.push(0);
    v.extend_from_slice(&(pdv_len + 4).to_be_bytes());
    v.extend_from_slice(&pdv_len.to_be_bytes());
    v.push(pc);
    v.push(0b11); // command, last
    v.extend_from_slice(command);
    v
}

/// Writes `bytes` within `limit`; a peer that does not read cannot hold us.
pub async fn send<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
    limit: Duration,
) -> std::io::Result<()> {
    match tokio::time::timeout(limit, async {
        w.write_all(bytes).await?;
        w.flush().await
    })
    .await
    {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "peer not reading",
        )),
    }
}

/// One presentation data value of a P-DATA-TF (PS3.8 §9.3.5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pdv<'a> {
    pub pc: u8,
    pub command: bool,
    pub last: bool,
    pub data: &'a [u8],
}

/// The PDVs of a P-DATA-TF body, each length checked against what is left of the PDU.
pub fn pdvs(body: &[u8]) -> Pdvs<'_> {
    Pdvs { rest: body }
}

pub struct Pdvs<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Pdvs<'a> {
    type Item = Result<Pdv<'a>, Violation>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let r = (|| {
            let Some((len, rest)) = self.rest.split_first_chunk::<4>() else {
                return Err(Violation::Overrun {
                    what: "PDV item header",
                    within: "P-DATA-TF",
                    declared: 4,
                    left: self.rest.len() as u64,
                });
            };
            let len = u32::from_be_bytes(*len) as u64;
            if len < 2 {
                return Err(Violation::Invalid(format!(
                    "PDV item of {len} bytes (at least 2)"
                )));
            }
            if len > rest.len() as u64 {
                return Err(Violation::Overrun {
                    what: "PDV item",
                    within: "P-DATA-TF",
                    declared: len,
                    left: rest.len() as u64,
                });
            }
            let (item, after) = rest.split_at(len as usize);
            let control = item[1];
            self.rest = after;
            Ok(Pdv {
                pc: item[0],
                command: control & 1 != 0,
                last: control & 2 != 0,
                data: &item[2..],
            })
        })();
        if r.is_err() {
            self.rest = &[];
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_associate_rq: 65536,
        max_p_data: 69632,
    };

    fn h(kind: u8, len: u32) -> Header {
        Header { kind, len }
    }

    #[test]
    fn headers_are_checked_before_their_bodies() {
        use Phase::*;
        assert_eq!(admit(h(1, 200), Request, &LIMITS), Ok(()));
        assert!(matches!(
            admit(h(1, u32::MAX), Request, &LIMITS),
            Err(Violation::TooLong { .. })
        ));
        assert!(matches!(
            admit(h(1, 20), Request, &LIMITS),
            Err(Violation::Invalid(_))
        ));
        assert_eq!(
            admit(h(0x4A, u32::MAX), Request, &LIMITS),
            Err(Violation::UnknownPdu(0x4A))
        );
        assert_eq!(
            admit(h(4, 100), Request, &LIMITS),
            Err(Violation::UnexpectedPdu("P-DATA-TF"))
        );
        assert_eq!(admit(h(4, 69632), Established, &LIMITS), Ok(()));
        assert_eq!(
            admit(h(4, u32::MAX), Established, &LIMITS)
                .unwrap_err()
                .metric(),
            "pdu_too_long"
        );
        assert_eq!(admit(h(5, 4), Established, &LIMITS), Ok(()));
        assert!(admit(h(5, 1 << 30), Established, &LIMITS).is_err());
        assert!(admit(h(1, 100), Established, &LIMITS).is_err());
        assert_eq!(
            admit(h(0, 0), Established, &LIMITS).unwrap_err().reason(),
            AbortReason::UnrecognizedPdu
        );
    }

    #[tokio::test]
    async fn a_declared_4_gib_pdu_reads_six_bytes_and_buffers_nothing() {
        let mut wire = vec![P_DATA_TF, 0, 0xFF, 0xFF, 0xFF, 0xFF];
        wire.extend(std::iter::repeat_n(0u8, 1 << 20));
        let mut r = PduReader::new(&wire[..]);
        let s = Duration::from_secs(1);
        let e = r.next(Phase::Established, &LIMITS, s, s).await.unwrap_err();
        assert!(matches!(e, ReadError::Violation(Violation::TooLong { .. })));
        assert_eq!(r.capacity(), 0);
        let rest = r.into_inner();
        assert_eq!(rest.len(), 1 << 20, "nothing after the header was read");
    }

    #[test]
    fn pdv_lengths_must_stay_inside_their_pdu() {
        let mut body = 7u32.to_be_bytes().to_vec();
        body.extend([1, 3, b'a', b'b', b'c', b'd', b'e']);
        body.extend(2u32.to_be_bytes());
        body.extend([3, 0]);
        let v: Vec<_> = pdvs(&body).collect();
        assert_eq!(v.len(), 2);
        let first = v[0].clone().unwrap();
        assert_eq!(
            (first.pc, first.command, first.last, first.data),
            (1, true, true, &b"abcde"[..])
        );
        assert!(v[1].clone().unwrap().data.is_empty());
        let mut past = 1000u32.to_be_bytes().to_vec();
        past.extend([1, 0, 1, 2]);
        let v: Vec<_> = pdvs(&past).collect();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].clone().unwrap_err().metric(), "item_length");
        let short = [0u8, 0, 0, 1, 1];
        assert!(pdvs(&short).next().unwrap().is_err());
        assert!(pdvs(&[0, 0]).next().unwrap().is_err());
    }

    #[test]
    fn written_pdus() {
        assert_eq!(
            abort(AbortReason::InvalidParameter),
            [7, 0, 0, 0, 0, 4, 0, 0, 2, 6]
        );
        assert_eq!(
            Reject::LOCAL_LIMIT_EXCEEDED.pdu(),
            [3, 0, 0, 0, 0, 4, 0, 2, 3, 2]
        );
        let p = p_data_command(5, b"xy");
        assert_eq!(p, [4, 0, 0, 0, 0, 8, 0, 0, 0, 4, 5, 3, b'x', b'y']);
        let body = &p[6..];
        let pdv = pdvs(body).next().unwrap().unwrap();
        assert_eq!((pdv.pc, pdv.data), (5, &b"xy"[..]));
    }
}
