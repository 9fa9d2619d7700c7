//! The kernel LED class: `/sys/class/leds/<name>/{brightness,max_brightness,trigger,...}`.
//!
//! - solid and off: trigger `none`, then `brightness`;
//! - blink: the `timer` trigger with `delay_on` / `delay_off`, so the kernel blinks and the LED
//!   keeps blinking even if the daemon stops (a fault shown before exiting stays visible);
//! - double blink: the `pattern` trigger where the kernel has it;
//! - otherwise (no such trigger, or amber on a bi-colour LED whose two halves must stay in
//!   phase) a software blinker thread writes `brightness`.

use std::path::{Path, PathBuf};

use crate::blinker::Blinker;
use crate::led::{Colour, LedError, Pattern, StatusLed};

/// Where the kernel puts LED class devices.
pub const SYSFS_LEDS: &str = "/sys/class/leds";

#[derive(Debug, Clone)]
pub struct SysfsLedConfig {
    /// Normally [`SYSFS_LEDS`]; a temp folder in tests.
    pub root: PathBuf,
    /// The (green or only) LED, e.g. `green:status`.
    pub name: String,
    /// The red half of a bi-colour LED, e.g. `red:status`; amber lights both.
    pub red: Option<String>,
}

#[derive(Debug, Clone)]
struct Dev {
    dir: PathBuf,
    max: u32,
    triggers: Vec<String>,
}

impl Dev {
    fn open(root: &Path, name: &str) -> Result<Dev, LedError> {
        let dir = root.join(name);
        if !dir.join("brightness").exists() {
            return Err(LedError::NotFound(dir));
        }
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        // An LED without max_brightness (never seen, but cheap to allow) is on at 1.
        let max = read("max_brightness")
            .trim()
            .parse::<u32>()
            .unwrap_or(1)
            .max(1);
        // `none rc-feedback [timer] pattern`: the selected one is in brackets.
        let triggers = read("trigger")
            .split_whitespace()
            .map(|t| t.trim_matches(['[', ']']).to_string())
            .collect();
        Ok(Dev { dir, max, triggers })
    }

    fn write(&self, file: &str, value: &str) -> Result<(), LedError> {
        let path = self.dir.join(file);
        std::fs::write(&path, value).map_err(|source| LedError::Io { path, source })
    }

    fn has(&self, trigger: &str) -> bool {
        self.triggers.iter().any(|t| t == trigger)
    }

    fn level(&self, on: bool) -> Result<(), LedError> {
        self.write("brightness", &if on { self.max } else { 0 }.to_string())
    }

    fn solid(&self, on: bool) -> Result<(), LedError> {
        self.write("trigger", "none")?;
        self.level(on)
    }
}

pub struct SysfsLed {
    green: Dev,
    red: Option<Dev>,
    blinker: Blinker,
}

/// Which of (green, red) are lit for `colour`; a single LED shows every colour.
fn lit(colour: Colour, has_red: bool) -> (bool, bool) {
    match (colour, has_red) {
        (_, false) => (true, false),
        (Colour::Green, true) => (true, false),
        (Colour::Red, true) => (false, true),
        (Colour::Amber, true) => (true, true),
    }
}

impl SysfsLed {
    pub fn open(cfg: &SysfsLedConfig) -> Result<SysfsLed, LedError> {
        let green = Dev::open(&cfg.root, &cfg.name)?;
        let red = match &cfg.red {
            Some(n) => Some(Dev::open(&cfg.root, n)?),
            None => None,
        };
        let (g, r) = (green.clone(), red.clone());
        let blinker = Blinker::new(Box::new(move |on, colour| {
            let (lg, lr) = lit(colour, r.is_some());
            let _ = g.level(on && lg);
            if let Some(r) = &r {
                let _ = r.level(on && lr);
            }
        }))
        .map_err(|source| LedError::Io {
            path: cfg.root.join(&cfg.name),
            source,
        })?;
        Ok(SysfsLed {
            green,
            red,
            blinker,
        })
    }

    fn devs(&self, colour: Colour) -> (Vec<&Dev>, Vec<&Dev>) {
        let (lg, lr) = lit(colour, self.red.is_some());
        let mut on = Vec::new();
        let mut off = Vec::new();
        (if lg { &mut on } else { &mut off }).push(&self.green);
        if let Some(r) = &self.red {
            (if lr { &mut on } else { &mut off }).push(r);
        }
        (on, off)
    }
}

/// The `pattern` trigger's text for a square wave: each level is held by a pair
/// `<brightness> <ms>` followed by `<brightness> 0` (a zero-time step, so no ramp).
fn kernel_pattern(steps: &[(bool, u32)], max: u32) -> String {
    steps
        .iter()
        .map(|&(on, ms)| {
            let b = if on { max } else { 0 };
            format!("{b} {ms} {b} 0")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl StatusLed for SysfsLed {
    fn set(&mut self, pattern: Pattern, colour: Colour) -> Result<(), LedError> {
        self.blinker.pause();
        let (on, off) = self.devs(colour);
        for d in &off {
            d.solid(false)?;
        }
        match pattern {
            Pattern::Off => on.iter().try_for_each(|d| d.solid(false)),
            Pattern::Solid => on.iter().try_for_each(|d| d.solid(true)),
            Pattern::Blink { on_ms, off_ms } if on.len() == 1 && on[0].has("timer") => {
                let d = on[0];
                // Selecting `timer` creates delay_on/delay_off; set them after.
                d.write("trigger", "timer")?;
                d.write("delay_on", &on_ms.to_string())?;
                d.write("delay_off", &off_ms.to_string())
            }
            Pattern::DoubleBlink { .. } if on.len() == 1 && on[0].has("pattern") => {
                let d = on[0];
                d.write("trigger", "pattern")?;
                d.write("pattern", &kernel_pattern(&pattern.steps(), d.max))?;
                // -1: repeat for ever (the default, written in case someone changed it).
                d.write("repeat", "-1")
            }
            _ => {
                for d in &on {
                    d.write("trigger", "none")?;
                }
                self.blinker.play(pattern.steps(), colour);
                Ok(())
            }
        }
    }

    fn describe(&self) -> String {
        match &self.red {
            Some(r) => format!(
                "kernel LED class {} + {}",
                self.green.dir.display(),
                r.dir.display()
            ),
            None => format!("kernel LED class {}", self.green.dir.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A fake `/sys/class/leds/<name>` with the files the kernel would have.
    fn fake_led(root: &Path, name: &str, triggers: &str) {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for (f, v) in [
            ("brightness", "0"),
            ("max_brightness", "255"),
            ("trigger", triggers),
            ("delay_on", "0"),
            ("delay_off", "0"),
            ("pattern", ""),
            ("repeat", "-1"),
        ] {
            std::fs::write(d.join(f), v).unwrap();
        }
    }

    fn read(root: &Path, name: &str, f: &str) -> String {
        std::fs::read_to_string(root.join(name).join(f))
            .unwrap()
            .trim()
            .to_string()
    }

    fn cfg(root: &Path, red: Option<&str>) -> SysfsLedConfig {
        SysfsLedConfig {
            root: root.to_path_buf(),
            name: "green:status".into(),
            red: red.map(String::from),
        }
    }

    #[test]
    fn solid_blink_and_double_blink_use_the_kernel_triggers() {
        let t = tempfile::tempdir().unwrap();
        fake_led(t.path(), "green:status", "[none] timer pattern heartbeat");
        let mut led = SysfsLed::open(&cfg(t.path(), None)).unwrap();
        led.set(Pattern::Solid, Colour::Green).unwrap();
        assert_eq!(read(t.path(), "green:status", "trigger"), "none");
        assert_eq!(read(t.path(), "green:status", "brightness"), "255");
        led.set(
            Pattern::Blink {
                on_ms: 100,
                off_ms: 400,
            },
            Colour::Red,
        )
        .unwrap();
        assert_eq!(read(t.path(), "green:status", "trigger"), "timer");
        assert_eq!(read(t.path(), "green:status", "delay_on"), "100");
        assert_eq!(read(t.path(), "green:status", "delay_off"), "400");
        led.set(
            Pattern::DoubleBlink {
                on_ms: 100,
                gap_ms: 150,
                off_ms: 700,
            },
            Colour::Amber,
        )
        .unwrap();
        assert_eq!(read(t.path(), "green:status", "trigger"), "pattern");
        assert_eq!(
            read(t.path(), "green:status", "pattern"),
            "255 100 255 0 0 150 0 0 255 100 255 0 0 700 0 0"
        );
        led.set(Pattern::Off, Colour::Green).unwrap();
        assert_eq!(read(t.path(), "green:status", "trigger"), "none");
        assert_eq!(read(t.path(), "green:status", "brightness"), "0");
        assert!(led.describe().contains("green:status"));
    }

    /// Polls `brightness` until both levels were seen (the software blinker at work).
    fn saw_both_levels(root: &Path, name: &str) -> bool {
        let (mut on, mut off) = (false, false);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(3) && !(on && off) {
            match read(root, name, "brightness").as_str() {
                "255" => on = true,
                "0" => off = true,
                _ => {}
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        on && off
    }

    #[test]
    fn without_the_pattern_trigger_a_thread_blinks() {
        let t = tempfile::tempdir().unwrap();
        fake_led(t.path(), "green:status", "[none] timer");
        let mut led = SysfsLed::open(&cfg(t.path(), None)).unwrap();
        led.set(
            Pattern::DoubleBlink {
                on_ms: 40,
                gap_ms: 40,
                off_ms: 80,
            },
            Colour::Green,
        )
        .unwrap();
        assert_eq!(read(t.path(), "green:status", "trigger"), "none");
        assert!(saw_both_levels(t.path(), "green:status"));
        // Solid stops the thread: the level stays.
        led.set(Pattern::Solid, Colour::Green).unwrap();
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(read(t.path(), "green:status", "brightness"), "255");
    }

    #[test]
    fn bi_colour_led_lights_red_green_or_both() {
        let t = tempfile::tempdir().unwrap();
        fake_led(t.path(), "green:status", "[none] timer pattern");
        fake_led(t.path(), "red:status", "[none] timer pattern");
        let mut led = SysfsLed::open(&cfg(t.path(), Some("red:status"))).unwrap();
        led.set(Pattern::Solid, Colour::Red).unwrap();
        assert_eq!(read(t.path(), "red:status", "brightness"), "255");
        assert_eq!(read(t.path(), "green:status", "brightness"), "0");
        led.set(Pattern::Solid, Colour::Amber).unwrap();
        assert_eq!(read(t.path(), "red:status", "brightness"), "255");
        assert_eq!(read(t.path(), "green:status", "brightness"), "255");
        // Amber blinking keeps both halves in phase with the software blinker.
        led.set(
            Pattern::Blink {
                on_ms: 40,
                off_ms: 40,
            },
            Colour::Amber,
        )
        .unwrap();
        assert_eq!(read(t.path(), "red:status", "trigger"), "none");
        assert!(saw_both_levels(t.path(), "red:status"));
        assert!(saw_both_levels(t.path(), "green:status"));
    }

    #[test]
    fn a_missing_led_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        assert!(matches!(
            SysfsLed::open(&cfg(t.path(), None)),
            Err(LedError::NotFound(_))
        ));
    }
}
