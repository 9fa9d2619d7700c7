//! A status LED on GPIO lines through the character device (`/dev/gpiochipN`, `gpiocdev`).
//! GPIO has no hardware blinking, so every pattern but off and solid runs on the software
//! blinker thread. The lines are released (back to inputs) when the LED is dropped.

use std::path::PathBuf;
use std::sync::Arc;

use gpiocdev::line::Value;
use gpiocdev::Request;

use crate::blinker::Blinker;
use crate::led::{Colour, LedError, Pattern, StatusLed};

#[derive(Debug, Clone)]
pub struct GpioLedConfig {
    /// e.g. `/dev/gpiochip0`.
    pub chip: PathBuf,
    /// Line offset of the (green or only) LED.
    pub line: u32,
    /// Line offset of the red half of a bi-colour LED.
    pub red_line: Option<u32>,
    /// The LED lights when the line is low.
    pub active_low: bool,
}

pub struct GpioLed {
    req: Arc<Request>,
    cfg: GpioLedConfig,
    blinker: Blinker,
}

fn gpio_err(cfg: &GpioLedConfig, e: impl std::fmt::Display) -> LedError {
    LedError::Gpio {
        chip: cfg.chip.display().to_string(),
        line: cfg.line,
        message: e.to_string(),
    }
}

fn value(on: bool) -> Value {
    if on {
        Value::Active
    } else {
        Value::Inactive
    }
}

/// Sets the green and red lines for `on` in `colour`.
fn drive(req: &Request, cfg: &GpioLedConfig, on: bool, colour: Colour) -> Result<(), LedError> {
    let (g, r) = match (colour, cfg.red_line) {
        (_, None) | (Colour::Green, Some(_)) => (true, false),
        (Colour::Red, Some(_)) => (false, true),
        (Colour::Amber, Some(_)) => (true, true),
    };
    req.set_value(cfg.line, value(on && g))
        .map_err(|e| gpio_err(cfg, e))?;
    if let Some(red) = cfg.red_line {
        req.set_value(red, value(on && r))
            .map_err(|e| gpio_err(cfg, e))?;
    }
    Ok(())
}

impl GpioLed {
    /// Requests the line(s) as outputs, initially off.
    pub fn open(cfg: &GpioLedConfig) -> Result<GpioLed, LedError> {
        let mut lines = vec![cfg.line];
        lines.extend(cfg.red_line);
        let mut b = Request::builder();
        b.on_chip(&cfg.chip)
            .with_consumer("cacd-status")
            .with_lines(&lines)
            .as_output(Value::Inactive);
        if cfg.active_low {
            b.as_active_low();
        }
        let req = Arc::new(b.request().map_err(|e| gpio_err(cfg, e))?);
        let (r, c) = (req.clone(), cfg.clone());
        let blinker = Blinker::new(Box::new(move |on, colour| {
            let _ = drive(&r, &c, on, colour);
        }))
        .map_err(|e| gpio_err(cfg, e))?;
        Ok(GpioLed {
            req,
            cfg: cfg.clone(),
            blinker,
        })
    }
}

impl StatusLed for GpioLed {
    fn set(&mut self, pattern: Pattern, colour: Colour) -> Result<(), LedError> {
        self.blinker.pause();
        match pattern {
            Pattern::Off => drive(&self.req, &self.cfg, false, colour),
            Pattern::Solid => drive(&self.req, &self.cfg, true, colour),
            _ => {
                self.blinker.play(pattern.steps(), colour);
                Ok(())
            }
        }
    }

    fn describe(&self) -> String {
        match self.cfg.red_line {
            Some(r) => format!(
                "GPIO {} lines {} (green) + {r} (red)",
                self.cfg.chip.display(),
                self.cfg.line
            ),
            None => format!("GPIO {} line {}", self.cfg.chip.display(), self.cfg.line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Driving real lines needs a gpio-sim chip (configfs, root); here only the refusal of a
    // chip that is not there is checked.
    #[test]
    fn a_missing_chip_is_an_error_naming_it() {
        let t = tempfile::tempdir().unwrap();
        let cfg = GpioLedConfig {
            chip: t.path().join("gpiochip9"),
            line: 4,
            red_line: None,
            active_low: false,
        };
        let e = GpioLed::open(&cfg).err().expect("no such chip");
        let s = e.to_string();
        assert!(s.contains("gpiochip9") && s.contains("line 4"), "{s}");
    }
}
