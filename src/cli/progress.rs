//! What the user sees while a generation runs (on a terminal only): a spinner naming the stage where there is no
//! count (loading ONNX Runtime, creating sessions, encoding the prompt, preparing latents, decoding), a step bar
//! with the current rate and ETA while denoising, and one line with the totals at the end.

use sd_onnx::pipeline::Progress;
use std::time::{Duration, Instant};

pub struct Ui {
    show: bool,
    bar: indicatif::ProgressBar,
    started: Instant,
    batches: usize,
    batch: usize,
    denoising: Duration,
    steps_started: Option<Instant>,
    steps: usize,
}

fn spinner_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
}

fn bar_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(
        "{msg}[{bar:30}] step {pos}/{len} {its} ETA {eta} ({elapsed})",
    )
    .map(|st| {
        st.with_key(
            "its",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.2} it/s", state.per_sec());
            },
        )
        .progress_chars("=> ")
    })
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
}

impl Ui {
    /// `show`: a terminal, and not --quiet.
    pub fn new(show: bool) -> Self {
        Ui {
            show,
            bar: Self::spinner(show),
            started: Instant::now(),
            batches: 1,
            batch: 0,
            denoising: Duration::ZERO,
            steps_started: None,
            steps: 0,
        }
    }

    fn spinner(show: bool) -> indicatif::ProgressBar {
        if !show {
            return indicatif::ProgressBar::hidden();
        }
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(spinner_style());
        b.enable_steady_tick(Duration::from_millis(120));
        b
    }

    fn prefix(&self) -> String {
        if self.batches > 1 {
            format!("batch {}/{} ", self.batch + 1, self.batches)
        } else {
            String::new()
        }
    }

    /// A line above the bar (or on stderr when there is none).
    pub fn bar_println(&self, line: String) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    /// A stage without a count (a finished step bar stays on screen above it).
    pub fn stage(&mut self, what: &str) {
        self.end_steps();
        self.bar.set_message(format!("{}{what}", self.prefix()));
    }

    fn end_steps(&mut self) {
        if let Some(t) = self.steps_started.take() {
            self.denoising += t.elapsed();
            self.bar.finish();
            self.bar = Self::spinner(self.show);
        }
    }

    /// The pipeline's progress.
    pub fn on(&mut self, p: Progress) {
        match p {
            Progress::Encoding => self.stage("encoding the prompt"),
            Progress::Batch { index, count } => {
                self.end_steps();
                (self.batch, self.batches) = (index, count);
                self.stage("preparing latents (loading the UNet)");
            }
            Progress::Step { done, total } => {
                if self.steps_started.is_none() {
                    // A bar of its own, so that the rate and ETA count from the first step, not from the
                    // loading before it.
                    self.steps_started = Some(Instant::now());
                    self.bar.finish_and_clear();
                    self.bar = if self.show {
                        indicatif::ProgressBar::new(total as u64)
                    } else {
                        indicatif::ProgressBar::hidden()
                    };
                    self.bar.set_style(bar_style());
                    self.bar.set_message(self.prefix());
                }
                self.steps += 1;
                self.bar.set_position(done as u64);
            }
            Progress::Decoding => self.stage("decoding"),
        }
    }

    /// Clear the bar; the summary line (when shown): total time, steps and their rate.
    pub fn finish(&mut self, show: bool, unet_calls: usize) -> Option<String> {
        self.end_steps();
        self.bar.finish_and_clear();
        if !show {
            return None;
        }
        let rate = if self.denoising > Duration::ZERO && self.steps > 1 {
            format!(
                " at {:.2} it/s",
                self.steps as f64 / self.denoising.as_secs_f64()
            )
        } else {
            String::new()
        };
        let calls = if unet_calls != self.steps {
            format!(", {unet_calls} UNet calls")
        } else {
            String::new()
        };
        Some(format!(
            "done in {:.1} s ({} steps in {:.1} s{rate}{calls})",
            self.started.elapsed().as_secs_f64(),
            self.steps,
            self.denoising.as_secs_f64()
        ))
    }
}
