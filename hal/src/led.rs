//! The LED vocabulary shared by every implementation.

use std::path::PathBuf;

/// What the LED does. Timings are in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pattern {
    Off,
    Solid,
    /// On for `on_ms`, off for `off_ms`, repeated.
    Blink {
        on_ms: u32,
        off_ms: u32,
    },
    /// On, off for `gap_ms`, on again, then off for `off_ms`; repeated.
    DoubleBlink {
        on_ms: u32,
        gap_ms: u32,
        off_ms: u32,
    },
}

/// Colours a board may have. A single-colour LED shows every colour as its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Colour {
    Green,
    /// Red and green together on a bi-colour LED.
    Amber,
    Red,
}

/// One period of a pattern as (lit, duration) steps; at most four, so a fixed-size vector.
pub type Steps = heapless::Vec<(bool, u32), 4>;

impl Pattern {
    /// The steps of one period; empty for `Off` and `Solid`, which do not change over time.
    pub fn steps(&self) -> Steps {
        let (all, n) = match *self {
            Pattern::Off | Pattern::Solid => return Steps::new(),
            Pattern::Blink { on_ms, off_ms } => {
                ([(true, on_ms), (false, off_ms), (false, 0), (false, 0)], 2)
            }
            Pattern::DoubleBlink {
                on_ms,
                gap_ms,
                off_ms,
            } => (
                [
                    (true, on_ms),
                    (false, gap_ms),
                    (true, on_ms),
                    (false, off_ms),
                ],
                4,
            ),
        };
        let mut s = Steps::new();
        // n is at most the capacity (4), so this cannot fail.
        let _ = s.extend_from_slice(&all[..n]);
        s
    }

    /// Short name for logs and the status page.
    pub fn name(&self) -> &'static str {
        match self {
            Pattern::Off => "off",
            Pattern::Solid => "solid",
            Pattern::Blink { .. } => "blink",
            Pattern::DoubleBlink { .. } => "double-blink",
        }
    }

    /// Human description including timings, e.g. `blink 100/100 ms`.
    pub fn describe(&self) -> String {
        match *self {
            Pattern::Off => "off".into(),
            Pattern::Solid => "solid".into(),
            Pattern::Blink { on_ms, off_ms } => format!("blink {on_ms}/{off_ms} ms"),
            Pattern::DoubleBlink {
                on_ms,
                gap_ms,
                off_ms,
            } => format!("double blink {on_ms}/{gap_ms}/{on_ms}/{off_ms} ms"),
        }
    }
}

impl Colour {
    pub fn name(&self) -> &'static str {
        match self {
            Colour::Green => "green",
            Colour::Amber => "amber",
            Colour::Red => "red",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedError {
    #[error("LED {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("LED {0}: not found")]
    NotFound(PathBuf),
    #[error("GPIO LED {chip} line {line}: {message}")]
    Gpio {
        chip: String,
        line: u32,
        message: String,
    },
}

/// One status LED.
pub trait StatusLed: Send {
    /// Shows `pattern` in `colour` until the next call.
    fn set(&mut self, pattern: Pattern, colour: Colour) -> Result<(), LedError>;
    /// Which implementation and device, for the status page.
    fn describe(&self) -> String;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_of_each_pattern() {
        assert!(Pattern::Off.steps().is_empty());
        assert!(Pattern::Solid.steps().is_empty());
        let b = Pattern::Blink {
            on_ms: 100,
            off_ms: 300,
        };
        assert_eq!(b.steps().as_slice(), &[(true, 100), (false, 300)]);
        let d = Pattern::DoubleBlink {
            on_ms: 100,
            gap_ms: 150,
            off_ms: 800,
        };
        assert_eq!(
            d.steps().as_slice(),
            &[(true, 100), (false, 150), (true, 100), (false, 800)]
        );
        assert_eq!(d.describe(), "double blink 100/150/100/800 ms");
    }
}
