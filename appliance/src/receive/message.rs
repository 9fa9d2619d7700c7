//! DIMSE messages from PDVs (PS3.7 §9.2, PS3.8 Annex E): a command set in one or more
//! command fragments, then — when the command says so — a data set in data fragments, all on
//! one presentation context, never interleaved.
//!
//! The command set is held in memory up to `max_command` bytes; data-set fragments are handed
//! on as they come (the session streams them to disk), counted against `max_dataset`. Either
//! limit is checked before the fragment is kept.

use super::pdu::{Pdv, Violation};

/// What one PDV completed.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// A fragment kept; the message goes on.
    More,
    /// A whole command set arrived on `pc`.
    Command { pc: u8, bytes: Vec<u8> },
    /// A data-set fragment of the message in progress; `last` ends the data set.
    Data { data: &'a [u8], last: bool },
}

#[derive(Debug)]
enum State {
    Idle,
    Command { pc: u8, buf: Vec<u8> },
    Data { pc: u8, received: u64 },
}

/// Reassembles DIMSE messages from PDVs with bounded memory.
#[derive(Debug)]
pub struct Assembler {
    state: State,
    max_command: usize,
    max_dataset: u64,
}

impl Assembler {
    pub fn new(max_command: usize, max_dataset: u64) -> Assembler {
        Assembler {
            state: State::Idle,
            max_command,
            max_dataset,
        }
    }

    /// Whether a message is in progress (for the idle/read time limits).
    pub fn busy(&self) -> bool {
        !matches!(self.state, State::Idle)
    }

    /// The presentation context of the data set in progress.
    pub fn data_context(&self) -> Option<u8> {
        match self.state {
            State::Data { pc, .. } => Some(pc),
            _ => None,
        }
    }

    /// After a [`Step::Command`] whose command announces a data set: its fragments follow on
    /// the same context.
    pub fn expect_data(&mut self, pc: u8) {
        self.state = State::Data { pc, received: 0 };
    }

    /// Takes one PDV.
    pub fn feed<'a>(&mut self, pdv: Pdv<'a>) -> Result<Step<'a>, Violation> {
        let command_too_long = |declared: usize, limit: usize| Violation::TooLong {
            what: "command set",
            declared: declared as u64,
            limit: limit as u64,
        };
        match (&mut self.state, pdv.command) {
            (State::Idle, true) => {
                if pdv.data.len() > self.max_command {
                    return Err(command_too_long(pdv.data.len(), self.max_command));
                }
                if pdv.last {
                    return Ok(Step::Command {
                        pc: pdv.pc,
                        bytes: pdv.data.to_vec(),
                    });
                }
                self.state = State::Command {
                    pc: pdv.pc,
                    buf: pdv.data.to_vec(),
                };
                Ok(Step::More)
            }
            (State::Command { pc, buf }, true) if *pc == pdv.pc => {
                let total = buf.len().saturating_add(pdv.data.len());
                if total > self.max_command {
                    return Err(command_too_long(total, self.max_command));
                }
                buf.extend_from_slice(pdv.data);
                if !pdv.last {
                    return Ok(Step::More);
                }
                let pc = *pc;
                let bytes = std::mem::take(buf);
                self.state = State::Idle;
                Ok(Step::Command { pc, bytes })
            }
            (State::Data { pc, received }, false) if *pc == pdv.pc => {
                let total = received.saturating_add(pdv.data.len() as u64);
                if total > self.max_dataset {
                    return Err(Violation::TooLong {
                        what: "data set",
                        declared: total,
                        limit: self.max_dataset,
                    });
                }
                *received = total;
                if pdv.last {
                    self.state = State::Idle;
                }
                Ok(Step::Data {
                    data: pdv.data,
                    last: pdv.last,
                })
            }
            (State::Idle, false) => Err(Violation::Unexpected("data fragment without a command")),
            (State::Command { .. }, false) => {
                Err(Violation::Unexpected("data fragment inside a command set"))
            }
            (State::Data { .. }, true) => {
                Err(Violation::Unexpected("command fragment inside a data set"))
            }
            (State::Command { .. } | State::Data { .. }, _) => Err(Violation::Unexpected(
                "fragment on another presentation context",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdv(pc: u8, command: bool, last: bool, data: &[u8]) -> Pdv<'_> {
        Pdv {
            pc,
            command,
            last,
            data,
        }
    }

    #[test]
    fn a_command_and_its_data_set_in_fragments() {
        let mut a = Assembler::new(16, 100);
        assert_eq!(a.feed(pdv(1, true, false, b"abc")).unwrap(), Step::More);
        assert!(a.busy());
        assert_eq!(
            a.feed(pdv(1, true, true, b"de")).unwrap(),
            Step::Command {
                pc: 1,
                bytes: b"abcde".to_vec()
            }
        );
        assert!(!a.busy());
        a.expect_data(1);
        assert_eq!(
            a.feed(pdv(1, false, false, b"xy")).unwrap(),
            Step::Data {
                data: b"xy",
                last: false
            }
        );
        assert_eq!(
            a.feed(pdv(1, false, true, b"z")).unwrap(),
            Step::Data {
                data: b"z",
                last: true
            }
        );
        assert!(!a.busy());
    }

    #[test]
    fn endless_command_fragments_stop_at_the_limit() {
        let mut a = Assembler::new(16, 100);
        let chunk = [0u8; 6];
        let mut kept = 0;
        let e = loop {
            match a.feed(pdv(1, true, false, &chunk)) {
                Ok(_) => kept += 6,
                Err(e) => break e,
            }
        };
        assert_eq!(kept, 12);
        assert_eq!(e.metric(), "command_too_long");
        let mut a = Assembler::new(16, 100);
        assert!(a.feed(pdv(1, true, true, &[0; 17])).is_err());
    }

    #[test]
    fn data_sets_stop_at_their_limit_and_order_is_enforced() {
        let mut a = Assembler::new(16, 10);
        a.expect_data(3);
        assert!(a.feed(pdv(3, false, false, &[0; 8])).is_ok());
        assert_eq!(
            a.feed(pdv(3, false, false, &[0; 8])).unwrap_err().metric(),
            "dataset_too_long"
        );
        let mut a = Assembler::new(16, 10);
        assert!(a.feed(pdv(1, false, true, b"x")).is_err(), "data first");
        let mut a = Assembler::new(16, 10);
        a.feed(pdv(1, true, false, b"x")).unwrap();
        assert!(a.feed(pdv(3, true, true, b"x")).is_err(), "other context");
        let mut a = Assembler::new(16, 10);
        a.expect_data(1);
        assert!(a.feed(pdv(1, true, true, b"x")).is_err(), "command in data");
    }
}
