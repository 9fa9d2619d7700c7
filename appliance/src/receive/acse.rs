//! Association negotiation: the A-ASSOCIATE-RQ parsed strictly (PS3.8 §9.3.2), the decision
//! (A-ASSOCIATE-AC or -RJ), and the A-ASSOCIATE-AC written.
//!
//! Written by hand, like `pdu`: every item length is checked against what is left of the item
//! or PDU that holds it, presentation-context IDs must be odd and distinct, and every UID must
//! be one (`crate::uid::check`). A request that breaks any of these is a [`Violation`]: the
//! connection ends with an A-ABORT, never with a half-understood association.

use super::pdu::{Reject, Violation, ASSOCIATE_AC, ASSOCIATE_RQ_FIXED};

/// The DICOM application context (PS3.7 Annex A.2.1).
pub const APPLICATION_CONTEXT: &str = "1.2.840.10008.3.1.1.1";
const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";

/// A proposed presentation context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposed {
    pub id: u8,
    pub abstract_syntax: String,
    pub transfer_syntaxes: Vec<String>,
}

/// An A-ASSOCIATE-RQ, as far as the SCP uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssociateRq {
    pub protocol_version: u16,
    /// As sent (16 characters, space padded): the A-ASSOCIATE-AC echoes them.
    pub called_raw: [u8; 16],
    pub calling_raw: [u8; 16],
    pub application_context: String,
    pub contexts: Vec<Proposed>,
    /// The requestor's maximum PDU length; 0: no limit.
    pub max_pdu: u32,
}

impl AssociateRq {
    pub fn called(&self) -> String {
        ae(&self.called_raw)
    }
    pub fn calling(&self) -> String {
        ae(&self.calling_raw)
    }
}

fn ae(raw: &[u8; 16]) -> String {
    String::from_utf8_lossy(raw).trim().to_string()
}

/// Items of a PDU or of an item: (type, value), each length checked against what is left.
struct Items<'a> {
    rest: &'a [u8],
    within: &'static str,
}

impl<'a> Items<'a> {
    fn new(bytes: &'a [u8], within: &'static str) -> Items<'a> {
        Items {
            rest: bytes,
            within,
        }
    }

    fn next_item(&mut self) -> Result<Option<(u8, &'a [u8])>, Violation> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let Some((head, rest)) = self.rest.split_first_chunk::<4>() else {
            return Err(Violation::Overrun {
                what: "item header",
                within: self.within,
                declared: 4,
                left: self.rest.len() as u64,
            });
        };
        let len = u16::from_be_bytes([head[2], head[3]]) as usize;
        if len > rest.len() {
            return Err(Violation::Overrun {
                what: "item",
                within: self.within,
                declared: len as u64,
                left: rest.len() as u64,
            });
        }
        let (value, after) = rest.split_at(len);
        self.rest = after;
        Ok(Some((head[0], value)))
    }
}

fn uid_of(value: &[u8], what: &str) -> Result<String, Violation> {
    let s = std::str::from_utf8(value)
        .map_err(|_| Violation::Invalid(format!("{what} is not text")))?
        .trim_end_matches(['\0', ' '])
        .to_string();
    crate::uid::check(&s).map_err(|e| Violation::Invalid(format!("{what} UID {e}")))?;
    Ok(s)
}

/// Parses the body of an A-ASSOCIATE-RQ (after the 6-byte PDU header).
pub fn parse_rq(body: &[u8]) -> Result<AssociateRq, Violation> {
    let Some((fixed, items)) = body.split_at_checked(ASSOCIATE_RQ_FIXED as usize) else {
        return Err(Violation::Invalid(
            "A-ASSOCIATE-RQ shorter than its fixed fields".into(),
        ));
    };
    let protocol_version = u16::from_be_bytes([fixed[0], fixed[1]]);
    let mut called_raw = [0u8; 16];
    called_raw.copy_from_slice(&fixed[4..20]);
    let mut calling_raw = [0u8; 16];
    calling_raw.copy_from_slice(&fixed[20..36]);
    let mut application_context = None;
    let mut contexts: Vec<Proposed> = Vec::new();
    let mut max_pdu = 0;
    let mut user_info = false;
    let mut it = Items::new(items, "A-ASSOCIATE-RQ");
    while let Some((kind, value)) = it.next_item()? {
        match kind {
            0x10 => {
                if application_context.is_some() {
                    return Err(Violation::Invalid("two application context items".into()));
                }
                application_context = Some(uid_of(value, "application context")?);
            }
            0x20 => {
                let pc = parse_context(value)?;
                if contexts.iter().any(|c| c.id == pc.id) {
                    return Err(Violation::Invalid(format!(
                        "presentation context ID {} proposed twice",
                        pc.id
                    )));
                }
                contexts.push(pc);
            }
            0x50 => {
                if user_info {
                    return Err(Violation::Invalid("two user information items".into()));
                }
                user_info = true;
                max_pdu = parse_user_info(value)?;
            }
            // Items of other types are reserved: ignored, as PS3.8 §9.3.1 asks.
            _ => {}
        }
    }
    let Some(application_context) = application_context else {
        return Err(Violation::Invalid("no application context item".into()));
    };
    if contexts.is_empty() {
        return Err(Violation::Invalid(
            "no presentation context proposed".into(),
        ));
    }
    if !user_info {
        return Err(Violation::Invalid("no user information item".into()));
    }
    Ok(AssociateRq {
        protocol_version,
        called_raw,
        calling_raw,
        application_context,
        contexts,
        max_pdu,
    })
}

fn parse_context(value: &[u8]) -> Result<Proposed, Violation> {
    let Some((head, subs)) = value.split_first_chunk::<4>() else {
        return Err(Violation::Overrun {
            what: "presentation context fields",
            within: "presentation context item",
            declared: 4,
            left: value.len() as u64,
        });
    };
    let id = head[0];
    // PS3.8 §9.3.2.2: odd integers between 1 and 255.
    if id % 2 == 0 {
        return Err(Violation::Invalid(format!(
            "presentation context ID {id} is not odd (1-255)"
        )));
    }
    let mut abstract_syntax = None;
    let mut transfer_syntaxes = Vec::new();
    let mut it = Items::new(subs, "presentation context item");
    while let Some((kind, v)) = it.next_item()? {
        match kind {
            0x30 if abstract_syntax.is_none() => {
                abstract_syntax = Some(uid_of(v, "abstract syntax")?)
            }
            0x30 => {
                return Err(Violation::Invalid(format!(
                    "presentation context {id} has two abstract syntaxes"
                )))
            }
            0x40 => transfer_syntaxes.push(uid_of(v, "transfer syntax")?),
            other => {
                return Err(Violation::Invalid(format!(
                    "presentation context {id} holds a sub-item of type 0x{other:02X}"
                )))
            }
        }
    }
    let Some(abstract_syntax) = abstract_syntax else {
        return Err(Violation::Invalid(format!(
            "presentation context {id} has no abstract syntax"
        )));
    };
    if transfer_syntaxes.is_empty() {
        return Err(Violation::Invalid(format!(
            "presentation context {id} has no transfer syntax"
        )));
    }
    Ok(Proposed {
        id,
        abstract_syntax,
        transfer_syntaxes,
    })
}

/// The maximum-length sub-item of the user information item; other sub-items (implementation
/// identity, asynchronous operations, role selection, extended negotiation, user identity)
/// are length-checked and not used.
fn parse_user_info(value: &[u8]) -> Result<u32, Violation> {
    let mut max_pdu = 0;
    let mut it = Items::new(value, "user information item");
    while let Some((kind, v)) = it.next_item()? {
        if kind == 0x51 {
            let b: [u8; 4] = v.try_into().map_err(|_| {
                Violation::Invalid(format!("maximum length sub-item of {} bytes", v.len()))
            })?;
            max_pdu = u32::from_be_bytes(b);
        }
    }
    Ok(max_pdu)
}

/// What the SCP offers.
pub struct Offer<'a> {
    pub abstract_syntaxes: &'a [&'a str],
    pub transfer_syntaxes: &'a [String],
    pub max_pdu: u32,
    pub implementation_class_uid: &'a str,
    pub implementation_version: &'a str,
}

/// An accepted presentation context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub id: u8,
    pub abstract_syntax: String,
    pub transfer_syntax: String,
}

/// The negotiated association: what the A-ASSOCIATE-AC says.
#[derive(Debug, Clone)]
pub struct Negotiated {
    /// (id, result, transfer syntax) per proposed context, in the order proposed.
    results: Vec<(u8, u8, String)>,
    pub accepted: Vec<Accepted>,
}

/// Decides on a request whose AE titles were already checked: the protocol version and
/// application context, then each context (PS3.8 Table 9-18 results: 0 acceptance, 3 abstract
/// syntax not supported, 4 transfer syntaxes not supported). The first transfer syntax the
/// requestor lists that we offer is taken.
pub fn negotiate(rq: &AssociateRq, offer: &Offer) -> Result<Negotiated, Reject> {
    if rq.protocol_version & 1 == 0 {
        return Err(Reject::PROTOCOL_VERSION_NOT_SUPPORTED);
    }
    if rq.application_context != APPLICATION_CONTEXT {
        return Err(Reject::APPLICATION_CONTEXT_NOT_SUPPORTED);
    }
    let mut results = Vec::with_capacity(rq.contexts.len());
    let mut accepted = Vec::new();
    for pc in &rq.contexts {
        if !offer
            .abstract_syntaxes
            .contains(&pc.abstract_syntax.as_str())
        {
            results.push((pc.id, 3, IMPLICIT_VR_LE.to_string()));
            continue;
        }
        match pc
            .transfer_syntaxes
            .iter()
            .find(|ts| offer.transfer_syntaxes.contains(ts))
        {
            Some(ts) => {
                results.push((pc.id, 0, ts.clone()));
                accepted.push(Accepted {
                    id: pc.id,
                    abstract_syntax: pc.abstract_syntax.clone(),
                    transfer_syntax: ts.clone(),
                });
            }
            None => results.push((pc.id, 4, IMPLICIT_VR_LE.to_string())),
        }
    }
    Ok(Negotiated { results, accepted })
}

fn item(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    out.push(kind);
    out.push(0);
    // Our own items: UIDs (≤ 64 bytes) and the few small ones below.
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
}

/// The A-ASSOCIATE-AC for `rq`.
pub fn associate_ac(rq: &AssociateRq, n: &Negotiated, offer: &Offer) -> Vec<u8> {
    let mut body = Vec::with_capacity(256 + 64 * n.results.len());
    body.extend_from_slice(&1u16.to_be_bytes());
    body.extend_from_slice(&[0, 0]);
    body.extend_from_slice(&rq.called_raw);
    body.extend_from_slice(&rq.calling_raw);
    body.extend_from_slice(&[0; 32]);
    item(&mut body, 0x10, APPLICATION_CONTEXT.as_bytes());
    for (id, result, ts) in &n.results {
        let mut pc = vec![*id, 0, *result, 0];
        item(&mut pc, 0x40, ts.as_bytes());
        item(&mut body, 0x21, &pc);
    }
    let mut user = Vec::new();
    item(&mut user, 0x51, &offer.max_pdu.to_be_bytes());
    item(&mut user, 0x52, offer.implementation_class_uid.as_bytes());
    item(&mut user, 0x55, offer.implementation_version.as_bytes());
    item(&mut body, 0x50, &user);
    let mut pdu = vec![ASSOCIATE_AC, 0];
    pdu.extend_from_slice(&(body.len() as u32).to_be_bytes());
    pdu.extend(body);
    pdu
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn ae16(s: &str) -> [u8; 16] {
        let mut a = [b' '; 16];
        a[..s.len()].copy_from_slice(s.as_bytes());
        a
    }

    fn it(kind: u8, v: &[u8]) -> Vec<u8> {
        let mut o = Vec::new();
        item(&mut o, kind, v);
        o
    }

    /// An A-ASSOCIATE-RQ body with these contexts (id, abstract, transfer syntaxes).
    pub fn rq_body(contexts: &[(u8, &str, &[&str])]) -> Vec<u8> {
        let mut b = vec![0, 1, 0, 0];
        b.extend(ae16("CACD"));
        b.extend(ae16("CT01"));
        b.extend([0; 32]);
        b.extend(it(0x10, APPLICATION_CONTEXT.as_bytes()));
        for (id, abs, tss) in contexts {
            let mut pc = vec![*id, 0, 0, 0];
            pc.extend(it(0x30, abs.as_bytes()));
            for ts in *tss {
                pc.extend(it(0x40, ts.as_bytes()));
            }
            b.extend(it(0x20, &pc));
        }
        let mut user = it(0x51, &16384u32.to_be_bytes());
        user.extend(it(0x52, b"1.2.3.4"));
        b.extend(it(0x50, &user));
        b
    }

    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
    const EXPLICIT: &str = "1.2.840.10008.1.2.1";

    #[test]
    fn a_well_formed_request_is_negotiated() {
        let body = rq_body(&[
            (1, CT, &["1.2.840.10008.1.2.4.50", EXPLICIT]),
            (3, "1.2.840.10008.5.1.4.1.1.4", &[EXPLICIT]),
            (5, CT, &["1.2.840.10008.1.2.4.50"]),
        ]);
        let rq = parse_rq(&body).unwrap();
        assert_eq!((rq.called(), rq.calling()), ("CACD".into(), "CT01".into()));
        assert_eq!(rq.max_pdu, 16384);
        let tss = vec![EXPLICIT.to_string()];
        let offer = Offer {
            abstract_syntaxes: &[CT],
            transfer_syntaxes: &tss,
            max_pdu: 65536,
            implementation_class_uid: "1.2.3",
            implementation_version: "CACD",
        };
        let n = negotiate(&rq, &offer).unwrap();
        assert_eq!(
            n.accepted,
            vec![Accepted {
                id: 1,
                abstract_syntax: CT.into(),
                transfer_syntax: EXPLICIT.into()
            }]
        );
        let results: Vec<u8> = n.results.iter().map(|r| r.1).collect();
        assert_eq!(results, vec![0, 3, 4]);
        let ac = associate_ac(&rq, &n, &offer);
        assert_eq!(ac[0], ASSOCIATE_AC);
        assert_eq!(
            u32::from_be_bytes([ac[2], ac[3], ac[4], ac[5]]) as usize,
            ac.len() - 6
        );
        // dicom-ul, as a peer would, reads it back.
        let pdu = dicom_ul::read_pdu(&ac[..], 1 << 20, true).unwrap().unwrap();
        let dicom_ul::Pdu::AssociationAC(ac) = pdu else {
            panic!("not an AC")
        };
        assert_eq!(ac.presentation_contexts.len(), 3);
        assert_eq!(ac.calling_ae_title.trim(), "CT01");
    }

    #[test]
    fn malformed_requests_are_violations() {
        let good = rq_body(&[(1, CT, &[EXPLICIT])]);
        assert!(parse_rq(&good).is_ok());
        for (why, body) in [
            ("even id", rq_body(&[(2, CT, &[EXPLICIT])])),
            ("id zero", rq_body(&[(0, CT, &[EXPLICIT])])),
            (
                "duplicate id",
                rq_body(&[(1, CT, &[EXPLICIT]), (1, CT, &[EXPLICIT])]),
            ),
            ("no ts", rq_body(&[(1, CT, &[])])),
            ("dot uid", rq_body(&[(1, ".", &[EXPLICIT])])),
            (
                "long uid",
                rq_body(&[(1, &format!("1.{}", "2".repeat(70)), &[EXPLICIT])]),
            ),
            ("no context", rq_body(&[])),
            ("short", good[..40].to_vec()),
        ] {
            assert!(parse_rq(&body).is_err(), "{why}");
        }
        // An item length past its PDU.
        let mut past = good.clone();
        past[68 + 2..68 + 4].copy_from_slice(&0xFFFFu16.to_be_bytes());
        assert_eq!(parse_rq(&past).unwrap_err().metric(), "item_length");
        // A sub-item length past its presentation-context item.
        let mut sub = good.clone();
        let pc_at = 68 + 4 + APPLICATION_CONTEXT.len();
        sub[pc_at + 8 + 2..pc_at + 8 + 4].copy_from_slice(&0x0400u16.to_be_bytes());
        assert_eq!(parse_rq(&sub).unwrap_err().metric(), "item_length");
    }

    #[test]
    fn version_and_context_are_refused_with_their_reasons() {
        let tss = vec![EXPLICIT.to_string()];
        let offer = Offer {
            abstract_syntaxes: &[CT],
            transfer_syntaxes: &tss,
            max_pdu: 65536,
            implementation_class_uid: "1.2.3",
            implementation_version: "CACD",
        };
        let mut rq = parse_rq(&rq_body(&[(1, CT, &[EXPLICIT])])).unwrap();
        rq.protocol_version = 2;
        assert_eq!(
            negotiate(&rq, &offer).unwrap_err(),
            Reject::PROTOCOL_VERSION_NOT_SUPPORTED
        );
        rq.protocol_version = 1;
        rq.application_context = "1.2.3".into();
        assert_eq!(
            negotiate(&rq, &offer).unwrap_err(),
            Reject::APPLICATION_CONTEXT_NOT_SUPPORTED
        );
    }
}
