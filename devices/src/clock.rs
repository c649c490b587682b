//! Simulated time: what the sensors see and what `ts` says.
//!
//! By default simulated time is wall-clock time. A [`ClockConfig`] can start it elsewhere
//! and run it faster (a `speed` of 60 passes a simulated day in 24 minutes), which makes
//! daily cycles visible in a demo. The sensors never read a clock themselves, so tests
//! drive them with any time they like.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// How simulated time relates to real time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClockConfig {
    /// Simulated epoch milliseconds at the start of the run; `None` means "now".
    pub start_ms: Option<i64>,
    /// Simulated seconds per real second; 1.0 is real time.
    pub speed: f64,
}

impl Default for ClockConfig {
    fn default() -> Self {
        ClockConfig {
            start_ms: None,
            speed: 1.0,
        }
    }
}

/// A running simulated clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin_ms: i64,
    speed: f64,
    started: Instant,
}

impl Clock {
    /// Start a clock now.
    pub fn start(config: ClockConfig) -> Self {
        Clock {
            origin_ms: config.start_ms.unwrap_or_else(wall_ms),
            speed: if config.speed.is_finite() && config.speed > 0.0 {
                config.speed
            } else {
                1.0
            },
            started: Instant::now(),
        }
    }

    /// Simulated epoch milliseconds now.
    pub fn now_ms(&self) -> i64 {
        let elapsed = self.started.elapsed().as_secs_f64() * 1000.0 * self.speed;
        self.origin_ms + elapsed as i64
    }

    /// The speed factor.
    pub fn speed(&self) -> f64 {
        self.speed
    }
}

/// Wall-clock epoch milliseconds.
pub fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_start_and_speed_run_simulated_time() {
        let clock = Clock::start(ClockConfig {
            start_ms: Some(1_000_000),
            speed: 3_600.0,
        });
        assert!(clock.now_ms() >= 1_000_000);
        std::thread::sleep(std::time::Duration::from_millis(20));
        // 20 ms of real time at 3600x is at least 72 simulated seconds.
        assert!(clock.now_ms() >= 1_000_000 + 72_000, "{}", clock.now_ms());
    }

    #[test]
    fn a_bad_speed_means_real_time() {
        assert_eq!(
            Clock::start(ClockConfig {
                start_ms: None,
                speed: -1.0
            })
            .speed(),
            1.0
        );
        assert_eq!(
            Clock::start(ClockConfig {
                start_ms: None,
                speed: f64::NAN
            })
            .speed(),
            1.0
        );
        let now = Clock::start(ClockConfig::default()).now_ms();
        assert!((now - wall_ms()).abs() < 1_000);
    }
}
