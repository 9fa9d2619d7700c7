//! A hand-written DICOM client for the tests that play a hostile or broken peer: PDUs built
//! byte by byte (PS3.8 §9.3), including the malformed ones no DICOM library would produce.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
pub const VERIFICATION: &str = "1.2.840.10008.1.1";
pub const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

pub fn padded_uid(uid: &str) -> Vec<u8> {
    let mut v = uid.as_bytes().to_vec();
    if v.len() % 2 == 1 {
        v.push(0);
    }
    v
}

/// An item (or sub-item) of an A-ASSOCIATE PDU.
pub fn item(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![kind, 0];
    v.extend_from_slice(&(body.len() as u16).to_be_bytes());
    v.extend_from_slice(body);
    v
}

pub fn ae(s: &str) -> [u8; 16] {
    let mut a = [b' '; 16];
    a[..s.len()].copy_from_slice(s.as_bytes());
    a
}

pub fn pdu(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![kind, 0];
    v.extend_from_slice(&(body.len() as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// A-ASSOCIATE-RQ from `calling` to CACD with these presentation contexts (id, abstract
/// syntax), each offering explicit VR little endian only.
pub fn associate_rq_with(calling: &str, contexts: &[(u8, &str)]) -> Vec<u8> {
    let mut body = vec![0, 1, 0, 0];
    body.extend_from_slice(&ae("CACD"));
    body.extend_from_slice(&ae(calling));
    body.extend_from_slice(&[0; 32]);
    body.extend(item(0x10, b"1.2.840.10008.3.1.1.1"));
    for (id, abs) in contexts {
        let mut pc = vec![*id, 0, 0, 0];
        pc.extend(item(0x30, abs.as_bytes()));
        pc.extend(item(0x40, EXPLICIT_LE.as_bytes()));
        body.extend(item(0x20, &pc));
    }
    let mut user = item(0x51, &16384u32.to_be_bytes());
    user.extend(item(0x52, b"1.2.826.0.1.3680043.10.1"));
    body.extend(item(0x50, &user));
    pdu(0x01, &body)
}

/// A-ASSOCIATE-RQ from CT01 to CACD proposing CT Image Storage (context 1) and Verification
/// (context 3).
pub fn associate_rq() -> Vec<u8> {
    associate_rq_with("CT01", &[(1, CT), (3, VERIFICATION)])
}

/// One P-DATA-TF with one PDV on presentation context 1.
pub fn p_data(command: bool, last: bool, data: &[u8]) -> Vec<u8> {
    p_data_on(1, command, last, data)
}

pub fn p_data_on(pc: u8, command: bool, last: bool, data: &[u8]) -> Vec<u8> {
    let mut pdv = ((data.len() + 2) as u32).to_be_bytes().to_vec();
    pdv.push(pc);
    pdv.push(u8::from(command) | (u8::from(last) << 1));
    pdv.extend_from_slice(data);
    pdu(0x04, &pdv)
}

pub fn implicit(group: u16, elem: u16, value: &[u8]) -> Vec<u8> {
    let mut v = group.to_le_bytes().to_vec();
    v.extend_from_slice(&elem.to_le_bytes());
    v.extend_from_slice(&(value.len() as u32).to_le_bytes());
    v.extend_from_slice(value);
    v
}

pub fn c_store_rq(sop_instance: &str) -> Vec<u8> {
    let mut rest = implicit(0, 0x0002, &padded_uid(CT));
    rest.extend(implicit(0, 0x0100, &1u16.to_le_bytes()));
    rest.extend(implicit(0, 0x0110, &7u16.to_le_bytes()));
    rest.extend(implicit(0, 0x0700, &0u16.to_le_bytes()));
    rest.extend(implicit(0, 0x0800, &0u16.to_le_bytes()));
    rest.extend(implicit(0, 0x1000, &padded_uid(sop_instance)));
    let mut cmd = implicit(0, 0x0000, &(rest.len() as u32).to_le_bytes());
    cmd.extend(rest);
    cmd
}

/// Explicit VR LE short-form element.
pub fn explicit(group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
    let mut v = group.to_le_bytes().to_vec();
    v.extend_from_slice(&elem.to_le_bytes());
    v.extend_from_slice(vr);
    v.extend_from_slice(&(value.len() as u16).to_le_bytes());
    v.extend_from_slice(value);
    v
}

pub fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(15))).unwrap();
    s
}

/// A connection from another loopback address (127.0.0.2: a second host on the network).
pub fn connect_from(local: [u8; 4], port: u16) -> std::io::Result<TcpStream> {
    // std cannot bind before connect; tokio's TcpSocket can.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let s = rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4()?;
        s.bind((local, 0).into())?;
        let stream = s.connect(([127, 0, 0, 1], port).into()).await?;
        stream.into_std()
    })?;
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    s.set_write_timeout(Some(Duration::from_secs(15)))?;
    Ok(s)
}

/// Reads one PDU: (type, body), or None when the peer closed or timed out.
pub fn read_pdu(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 6];
    s.read_exact(&mut head).ok()?;
    let len = u32::from_be_bytes([head[2], head[3], head[4], head[5]]) as usize;
    if len > 1 << 20 {
        return None;
    }
    let mut body = vec![0; len];
    s.read_exact(&mut body).ok()?;
    Some((head[0], body))
}

/// An established association (A-ASSOCIATE-AC received).
pub fn associate(port: u16) -> TcpStream {
    let mut s = connect(port);
    s.write_all(&associate_rq()).unwrap();
    let (kind, _) = read_pdu(&mut s).expect("an answer to A-ASSOCIATE-RQ");
    assert_eq!(kind, 0x02, "association accepted");
    s
}

/// The status of a C-STORE-RSP in a P-DATA-TF body, if that is what it is.
pub fn store_status(body: &[u8]) -> Option<u16> {
    // PDV: length(4) context(1) control(1) then the implicit-LE command set.
    let cmd = body.get(6..)?;
    let mut i = 0;
    while i + 8 <= cmd.len() {
        let tag = (
            u16::from_le_bytes([cmd[i], cmd[i + 1]]),
            u16::from_le_bytes([cmd[i + 2], cmd[i + 3]]),
        );
        let len = u32::from_le_bytes([cmd[i + 4], cmd[i + 5], cmd[i + 6], cmd[i + 7]]) as usize;
        if tag == (0, 0x0900) && len == 2 {
            return Some(u16::from_le_bytes([cmd[i + 8], cmd[i + 9]]));
        }
        i += 8 + len;
    }
    None
}

/// A-ABORT (type 7) with its source and reason, if `pdu` is one.
pub fn abort_reason(pdu: &(u8, Vec<u8>)) -> Option<(u8, u8)> {
    (pdu.0 == 0x07 && pdu.1.len() == 4).then(|| (pdu.1[2], pdu.1[3]))
}
