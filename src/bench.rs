//! Measurement helpers for `sd-onnx bench`: order statistics, peak RSS, and the scheduler micro-benchmark
//! (one `scale_model_input` + `step` on a latent of a given shape, for every scheduler).

use crate::rng::RngKind;
use crate::schedulers::{Latents, SchedulerConfig, SchedulerKind};
use std::time::{Duration, Instant};

/// The q-quantile (nearest rank) of some durations; zero for none.
pub fn quantile(values: &[Duration], q: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    let mut v = values.to_vec();
    v.sort();
    let idx = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[idx]
}

/// The median (lower middle) of the durations; zero when empty.
pub fn median(values: &[Duration]) -> Duration {
    quantile(values, 0.5)
}

/// Peak resident set size of this process (Linux `VmHWM`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Median time of one scheduler step (scale_model_input + step) on a latent of `shape`, over a full
/// `steps`-step schedule with a synthetic model output, for each scheduler the config can build; ancestral
/// and SDE schedulers draw their noise from `rng`, as in a run.
pub fn scheduler_steps(
    config: &SchedulerConfig,
    shape: [usize; 4],
    steps: usize,
    rng: RngKind,
) -> Vec<(SchedulerKind, Duration)> {
    let mut out = Vec::new();
    for (kind, _, _) in SchedulerKind::all() {
        let Ok(mut sched) = kind.build(config, steps) else {
            continue;
        };
        let mut noise = rng.build(0);
        let mut sample = Latents::from_shape_vec(shape, noise.randn(&shape))
            .unwrap_or_else(|_| Latents::zeros(shape));
        let model_out = sample.mapv(|v| 0.5 * v);
        let mut times = Vec::new();
        for i in 0..sched.timesteps().len() {
            let t = Instant::now();
            let scaled = sched.scale_model_input(sample.clone(), i);
            sample = sched.step(&model_out, i, &sample, noise.as_mut());
            times.push(t.elapsed());
            std::hint::black_box(&scaled);
        }
        out.push((kind, median(&times)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_scheduler_bench() {
        let d: Vec<Duration> = (1..=10).map(Duration::from_millis).collect();
        assert_eq!(median(&d), Duration::from_millis(5));
        assert_eq!(quantile(&d, 0.9), Duration::from_millis(9));
        let all = scheduler_steps(
            &SchedulerConfig::default(),
            [1, 4, 8, 8],
            4,
            RngKind::Philox,
        );
        // PNDM needs skip_prk_steps=true; every other scheduler builds from an empty config.
        assert_eq!(all.len(), 13);
        assert!(peak_rss_bytes().unwrap_or(1) > 0);
    }
}
