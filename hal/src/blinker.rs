//! A software blinker: one thread that plays a pattern's steps through an output function.
//! Used where the hardware cannot blink on its own (GPIO lines, two LEDs that must stay in
//! phase, kernels without the `pattern` trigger).

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::led::{Colour, Steps};

/// Sets the LED on or off in a colour; errors are the output's own business (a thread has
/// nobody to report to), so it returns nothing.
pub(crate) type Output = Box<dyn FnMut(bool, Colour) + Send>;

/// Shortest step: a pattern of zero-length steps must not spin a core.
const MIN_STEP_MS: u32 = 10;

#[derive(Default)]
struct Shared {
    program: Option<(Steps, Colour)>,
    /// Bumped by every change so the thread drops the step it is in.
    generation: u64,
    stop: bool,
}

pub(crate) struct Blinker {
    state: Arc<(Mutex<Shared>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Blinker {
    pub(crate) fn new(mut out: Output) -> std::io::Result<Blinker> {
        let state = Arc::new((Mutex::new(Shared::default()), Condvar::new()));
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name("cacd-led".into())
            .spawn(move || {
                let (m, cv) = &*st;
                let mut g = lock(m);
                loop {
                    if g.stop {
                        return;
                    }
                    let Some((steps, colour)) = g.program.clone() else {
                        g = cv.wait(g).unwrap_or_else(|e| e.into_inner());
                        continue;
                    };
                    let generation = g.generation;
                    'play: loop {
                        for &(lit, ms) in steps.iter() {
                            // Checked under the lock right before the write: after `play` or
                            // `pause` returns, no step of the old program is written.
                            if g.stop || g.generation != generation {
                                break 'play;
                            }
                            out(lit, colour);
                            let deadline = Instant::now()
                                + Duration::from_millis(u64::from(ms.max(MIN_STEP_MS)));
                            loop {
                                let now = Instant::now();
                                if g.stop || g.generation != generation {
                                    break 'play;
                                }
                                if now >= deadline {
                                    break;
                                }
                                g = cv
                                    .wait_timeout(g, deadline - now)
                                    .unwrap_or_else(|e| e.into_inner())
                                    .0;
                            }
                        }
                        if steps.is_empty() {
                            break 'play;
                        }
                    }
                    if g.generation == generation && !g.stop {
                        // An empty program: nothing to play until the next change.
                        g.program = None;
                    }
                }
            })?;
        Ok(Blinker {
            state,
            thread: Some(thread),
        })
    }

    /// Plays `steps` in `colour`, repeated, from now on.
    pub(crate) fn play(&self, steps: Steps, colour: Colour) {
        let (m, cv) = &*self.state;
        let mut g = lock(m);
        g.program = Some((steps, colour));
        g.generation += 1;
        cv.notify_all();
    }

    /// Stops playing; when this returns the thread writes nothing more until `play`.
    pub(crate) fn pause(&self) {
        let (m, cv) = &*self.state;
        let mut g = lock(m);
        g.program = None;
        g.generation += 1;
        cv.notify_all();
    }
}

impl Drop for Blinker {
    fn drop(&mut self) {
        {
            let (m, cv) = &*self.state;
            let mut g = lock(m);
            g.stop = true;
            cv.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::led::Pattern;

    #[test]
    fn plays_steps_and_stops_on_pause() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let b = Blinker::new(Box::new(move |lit, c| {
            s.lock().unwrap().push((lit, c));
        }))
        .unwrap();
        b.play(
            Pattern::Blink {
                on_ms: 20,
                off_ms: 20,
            }
            .steps(),
            Colour::Red,
        );
        std::thread::sleep(Duration::from_millis(200));
        b.pause();
        let n = seen.lock().unwrap().len();
        assert!(n >= 4, "only {n} steps in 200 ms");
        let v = seen.lock().unwrap().clone();
        assert!(v.contains(&(true, Colour::Red)) && v.contains(&(false, Colour::Red)));
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(seen.lock().unwrap().len(), n, "wrote after pause");
    }
}
