//! What the bench reads about the hub process from /proc: resident memory and CPU time.

use std::io;

/// Linux reports utime/stime in /proc/PID/stat in clock ticks of USER_HZ, which is 100 on
/// every architecture Linux runs on (it is part of the user-space ABI, independent of the
/// kernel's internal HZ).
const TICKS_PER_SEC: u64 = 100;

/// Resident set size of `pid`, in KiB (VmRSS from /proc/PID/status).
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS in status"))
}

/// User + system CPU time of `pid` so far, in microseconds (utime + stime from
/// /proc/PID/stat; all threads of the process).
pub fn cpu_micros(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_cpu_micros(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unexpected /proc stat format"))
}

fn parse_cpu_micros(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain spaces; fields after
    // the last ')' start at field 3 (state). utime and stime are fields 14 and 15.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 1_000_000 / TICKS_PER_SEC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let stat = "1234 (tele hub) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 9 0 100 \
                    1000000 2000 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_cpu_micros(stat), Some(3_000_000));
    }

    #[test]
    fn reads_our_own_process() {
        let pid = std::process::id();
        assert!(rss_kib(pid).expect("rss") > 0);
        cpu_micros(pid).expect("cpu");
    }
}
