//! Progress of long operations (fsck, waiting for writes at unmount) on stderr: a redrawn bar
//! with rate and ETA on a terminal, plain lines at most every few seconds otherwise (logs,
//! the journal, pipes). Written here rather than pulled from a crate: it is a few dozen lines
//! and needs no terminal database.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::units;

/// Redraw interval on a terminal.
const TTY_EVERY: Duration = Duration::from_millis(100);
/// Interval between plain lines.
const PLAIN_EVERY: Duration = Duration::from_secs(5);
/// Width of the bar in cells.
const BAR: usize = 24;

/// One operation's progress display.
pub struct Progress {
    label: String,
    tty: bool,
    phase: String,
    phase_started: Instant,
    last: Option<Instant>,
    /// The counts of the last line shown in this phase.
    shown: Option<(u64, u64)>,
    drawn: bool,
}

impl Progress {
    /// A display labelled `label` (e.g. "fsck"); a bar if stderr is a terminal.
    pub fn new(label: &str) -> Progress {
        // SAFETY: isatty only inspects the descriptor.
        let tty =
            unsafe { libc::isatty(2) } == 1 && std::env::var("TERM").map_or(true, |t| t != "dumb");
        Progress::with_mode(label, tty)
    }

    pub fn with_mode(label: &str, tty: bool) -> Progress {
        Progress {
            label: label.into(),
            tty,
            phase: String::new(),
            phase_started: Instant::now(),
            last: None,
            shown: None,
            drawn: false,
        }
    }

    /// Reports `done` of `total` in `phase` (`bytes`: the counts are bytes, else items).
    pub fn update(&mut self, phase: &str, done: u64, total: u64, bytes: bool) {
        let Some(line) = self.next_line(phase, done, total, bytes, Instant::now()) else {
            return;
        };
        let finished = done >= total;
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            self.drawn = true;
            if finished {
                let _ = writeln!(err);
                self.drawn = false;
            }
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    /// What an update at `now` shows, if anything: at most one line per interval, none when
    /// nothing moved since the last one (a caller polling a finished phase, like `umount`
    /// waiting on the final checkpoint, printed the same line over and over), and the end of
    /// each phase exactly once.
    fn next_line(
        &mut self,
        phase: &str,
        done: u64,
        total: u64,
        bytes: bool,
        now: Instant,
    ) -> Option<String> {
        if phase != self.phase {
            self.phase = phase.into();
            self.phase_started = now;
            self.last = None;
            self.shown = None;
        }
        if self.shown == Some((done, total)) {
            return None;
        }
        let every = if self.tty { TTY_EVERY } else { PLAIN_EVERY };
        let finished = done >= total;
        if !finished && self.last.is_some_and(|t| now - t < every) {
            return None;
        }
        if !self.tty && !finished && self.last.is_none() {
            // Plain lines: the first one only after PLAIN_EVERY, so a quick phase logs one
            // line (its end), a long one a line every few seconds.
            self.last = Some(now);
            return None;
        }
        self.last = Some(now);
        self.shown = Some((done, total));
        Some(self.line(done, total, bytes, now - self.phase_started))
    }

    /// The text of one update (without the redraw codes).
    pub fn line(&self, done: u64, total: u64, bytes: bool, elapsed: Duration) -> String {
        let fmt = |n: u64| {
            if bytes {
                units::bytes(n)
            } else {
                n.to_string()
            }
        };
        let frac = if total == 0 {
            1.0
        } else {
            (done as f64 / total as f64).min(1.0)
        };
        let secs = elapsed.as_secs_f64();
        let rate = if secs > 0.05 { done as f64 / secs } else { 0.0 };
        let rate_text = if rate <= 0.0 {
            String::new()
        } else if bytes {
            format!(", {}/s", units::bytes(rate as u64))
        } else {
            format!(", {:.0}/s", rate)
        };
        let eta = if done >= total {
            format!(", done in {}", units::duration(secs.round() as u64))
        } else if rate > 0.0 {
            let left = (total - done) as f64 / rate;
            format!(", ETA {}", units::duration(left.ceil() as u64))
        } else {
            String::new()
        };
        let counts = format!("{} of {}", fmt(done), fmt(total));
        if self.tty {
            let filled = (frac * BAR as f64).round() as usize;
            format!(
                "{} {}: [{}{}] {:>3.0}% {counts}{rate_text}{eta}",
                self.label,
                self.phase,
                "#".repeat(filled),
                "-".repeat(BAR - filled),
                frac * 100.0,
            )
        } else {
            format!(
                "bitcloud: {} {}: {:.0}% ({counts}){rate_text}{eta}",
                self.label,
                self.phase,
                frac * 100.0,
            )
        }
    }

    /// Ends the display (leaves the terminal on a fresh line).
    pub fn finish(&mut self) {
        if self.tty && self.drawn {
            let _ = writeln!(std::io::stderr());
            self.drawn = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_have_percent_rate_and_eta() {
        let p = Progress::with_mode("fsck", false);
        let l = p.line(512 << 20, 1 << 30, true, Duration::from_secs(2));
        assert_eq!(
            l,
            "bitcloud: fsck : 50% (512.0 MiB of 1.0 GiB), 256.0 MiB/s, ETA 2 s"
        );
        let l = p.line(1 << 30, 1 << 30, true, Duration::from_secs(4));
        assert!(
            l.ends_with("100% (1.0 GiB of 1.0 GiB), 256.0 MiB/s, done in 4 s"),
            "{l}"
        );
    }

    /// Regression: `umount` off a terminal printed the same "100% ... done" line a dozen
    /// times (with a falling rate) while it polled a finished phase.
    #[test]
    fn a_finished_phase_is_reported_once() {
        for tty in [false, true] {
            let mut p = Progress::with_mode("umount", tty);
            let t0 = Instant::now();
            let mut lines = 0;
            for i in 0..40u64 {
                let now = t0 + Duration::from_millis(50 * i);
                let (done, total) = if i < 10 { (i, 10) } else { (10, 10) };
                lines += p.next_line("writing", done, total, true, now).is_some() as usize;
            }
            // Plain: only the end (the phase took < 5 s); tty: redraws, one end.
            assert!(
                if tty { lines <= 11 } else { lines == 1 },
                "tty {tty}: {lines} lines"
            );
            let mut shown_done = 0;
            for i in 0..20u64 {
                let now = t0 + Duration::from_secs(10 + i);
                shown_done += p.next_line("writing", 10, 10, true, now).is_some() as usize;
            }
            assert_eq!(shown_done, 0, "tty {tty}: the end again");
            assert!(
                p.next_line("checkpoint", 1, 1, false, t0 + Duration::from_secs(40))
                    .is_some()
            );
        }
    }

    #[test]
    fn tty_lines_draw_a_bar() {
        let mut p = Progress::with_mode("fsck", true);
        p.phase = "data".into();
        let l = p.line(25, 100, false, Duration::from_secs(1));
        assert!(
            l.starts_with("fsck data: [######------------------]  25% 25 of 100"),
            "{l}"
        );
        assert!(l.contains("ETA 3 s"), "{l}");
        assert!(!l.contains('\r'));
    }
}
