//! A simulated LED that records what it was told to show (for tests and boards without one).
//!
//! The last [`SIM_HISTORY`] changes are kept in a fixed-size ring (`heapless::HistoryBuffer`),
//! so a long-running daemon with a simulated LED never grows. Optionally every change also
//! rewrites a text file (one event a line), so another process can follow the LED, including
//! the last pattern shown before the daemon exited.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::led::{Colour, LedError, Pattern, StatusLed};

/// Changes kept in memory.
pub const SIM_HISTORY: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedEvent {
    /// Wall-clock time of the change, ms since the Unix epoch.
    pub at_ms: u64,
    pub pattern: Pattern,
    pub colour: Colour,
}

impl LedEvent {
    /// `at_ms<TAB>pattern<TAB>colour`, the line format of the record file.
    pub fn line(&self) -> String {
        format!(
            "{}\t{}\t{}",
            self.at_ms,
            self.pattern.describe(),
            self.colour.name()
        )
    }
}

type Ring = heapless::HistoryBuffer<LedEvent, SIM_HISTORY>;

pub struct SimLed {
    ring: Arc<Mutex<Ring>>,
    record: Option<PathBuf>,
}

/// Reads what a [`SimLed`] recorded (cheap to clone; the LED itself goes to its owner).
#[derive(Clone)]
pub struct SimLedHandle {
    ring: Arc<Mutex<Ring>>,
}

impl SimLed {
    /// A simulated LED; with `record`, every change also rewrites that file.
    pub fn new(record: Option<PathBuf>) -> SimLed {
        SimLed {
            ring: Arc::new(Mutex::new(Ring::new())),
            record,
        }
    }

    pub fn handle(&self) -> SimLedHandle {
        SimLedHandle {
            ring: self.ring.clone(),
        }
    }
}

impl SimLedHandle {
    /// Recorded changes, oldest first.
    pub fn events(&self) -> Vec<LedEvent> {
        let r = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        r.oldest_ordered().copied().collect()
    }

    /// The pattern shown now.
    pub fn current(&self) -> Option<LedEvent> {
        let r = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        r.recent().copied()
    }
}

impl StatusLed for SimLed {
    fn set(&mut self, pattern: Pattern, colour: Colour) -> Result<(), LedError> {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let text = {
            let mut r = self.ring.lock().unwrap_or_else(|e| e.into_inner());
            r.write(LedEvent {
                at_ms,
                pattern,
                colour,
            });
            let mut t = String::new();
            for e in r.oldest_ordered() {
                t.push_str(&e.line());
                t.push('\n');
            }
            t
        };
        if let Some(path) = &self.record {
            // Written to a temp file and renamed, so a reader never sees half a file.
            let tmp = path.with_extension("tmp");
            let io = |source| LedError::Io {
                path: path.clone(),
                source,
            };
            std::fs::write(&tmp, text).map_err(io)?;
            std::fs::rename(&tmp, path).map_err(io)?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        match &self.record {
            Some(p) => format!("simulated (recorded to {})", p.display()),
            None => "simulated".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_changes_in_a_bounded_ring_and_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("led.txt");
        let mut led = SimLed::new(Some(file.clone()));
        let h = led.handle();
        assert!(h.current().is_none());
        led.set(Pattern::Solid, Colour::Green).unwrap();
        led.set(
            Pattern::Blink {
                on_ms: 100,
                off_ms: 100,
            },
            Colour::Red,
        )
        .unwrap();
        let ev = h.events();
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].pattern, Pattern::Solid);
        assert_eq!(h.current().unwrap().colour, Colour::Red);
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[1].ends_with("\tblink 100/100 ms\tred"), "{text}");
        for _ in 0..(SIM_HISTORY + 10) {
            led.set(Pattern::Off, Colour::Green).unwrap();
        }
        assert_eq!(h.events().len(), SIM_HISTORY);
        assert_eq!(
            std::fs::read_to_string(&file).unwrap().lines().count(),
            SIM_HISTORY
        );
    }
}
