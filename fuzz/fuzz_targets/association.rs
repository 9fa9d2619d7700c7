//! The association state machine as the Storage SCP runs it, fed one connection's bytes:
//! the bounded PDU reader in the request phase → A-ASSOCIATE-RQ parsing → negotiation and the
//! A-ASSOCIATE-AC we would send → the bounded reader in the established phase → PDVs →
//! DIMSE message reassembly → command-set parsing (a C-STORE with a data set switches the
//! reassembly to its data fragments). Stops where the SCP would abort.
//!
//! Checked besides "no panic, no hang, no unbounded allocation": the PDU buffer never grows
//! past the limit of the phase, a reassembled command set never past `max_command`, and the
//! A-ASSOCIATE-AC's length field matches its bytes.
//!
//! Input: the bytes the peer sends (see fuzz/make_association_corpus.py for the seeds).
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use cacd::receive::wire::{
    associate_ac, negotiate, parse_rq, pdvs, Assembler, Limits, Offer, PduReader, Phase, Step,
};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    max_associate_rq: 65536,
    max_p_data: 69632,
};
const MAX_COMMAND: usize = 16384;
const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
const VERIFICATION: &str = "1.2.840.10008.1.1";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a tokio runtime for the fuzz target")
    })
}

fn syntaxes() -> &'static [String] {
    static TS: OnceLock<Vec<String>> = OnceLock::new();
    TS.get_or_init(cacd::receive::accepted_transfer_syntaxes)
}

async fn session(data: &[u8]) {
    let t = Duration::from_secs(1);
    let mut r = PduReader::new(data);
    if r.next(Phase::Request, &LIMITS, t, t).await.is_err() {
        return;
    }
    assert!(r.body().len() <= LIMITS.max_associate_rq as usize);
    let Ok(rq) = parse_rq(r.body()) else {
        return;
    };
    let offer = Offer {
        abstract_syntaxes: &[VERIFICATION, CT],
        transfer_syntaxes: syntaxes(),
        max_pdu: 65536,
        implementation_class_uid: "1.2.826.0.1.3680043.10.1481.1",
        implementation_version: "CACD",
    };
    let Ok(n) = negotiate(&rq, &offer) else {
        return;
    };
    let ac = associate_ac(&rq, &n, &offer);
    let declared = u32::from_be_bytes([ac[2], ac[3], ac[4], ac[5]]) as usize;
    assert_eq!(declared, ac.len() - 6, "A-ASSOCIATE-AC length field");
    let mut asm = Assembler::new(MAX_COMMAND, 1 << 20);
    loop {
        let Ok(h) = r.next(Phase::Established, &LIMITS, t, t).await else {
            return;
        };
        assert!(r.body().len() <= LIMITS.max_p_data as usize);
        if h.kind != 0x04 {
            return;
        }
        let body = r.take_body();
        for pdv in pdvs(&body) {
            let Ok(pdv) = pdv else { return };
            if !n.accepted.iter().any(|c| c.id == pdv.pc) {
                return;
            }
            match asm.feed(pdv) {
                Ok(Step::Command { pc, bytes }) => {
                    assert!(bytes.len() <= MAX_COMMAND);
                    match cacd::dimse::read_command(&bytes) {
                        Ok(cmd) if cmd.has_dataset => asm.expect_data(pc),
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
        r.restore(body);
    }
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(session(data));
});
