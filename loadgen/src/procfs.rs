//! Reading the server's CPU time and memory from `/proc/<pid>/{stat,status}`.
//!
//! Parsing is pure (text in, numbers out) and unit-tested; [`sample`] is the thin reader.
//! CPU time = utime + stime (fields 14 and 15 of `stat`, in clock ticks, converted with
//! `sysconf(_SC_CLK_TCK)`); memory = `VmRSS` / `VmHWM` of `status` in KiB.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ProcError {
    #[error("cannot read /proc/{pid}/{file}: {source} (is --server-pid right?)")]
    Read {
        pid: u32,
        file: &'static str,
        source: std::io::Error,
    },
    #[error("unexpected format of /proc/{pid}/{file}")]
    Format { pid: u32, file: &'static str },
}

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcSample {
    /// utime + stime, seconds.
    pub cpu_s: f64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

/// utime + stime in clock ticks from the text of `/proc/<pid>/stat`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The KiB value of a `status` line such as `VmRSS:    1234 kB`.
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.split_ascii_whitespace().next()?.parse().ok()
    })
}

fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Reads CPU time and memory of `pid`.
pub fn sample(pid: u32) -> Result<ProcSample, ProcError> {
    let read =
        |file: &'static str| {
            std::fs::read_to_string(format!("/proc/{pid}/{file}"))
                .map_err(|source| ProcError::Read { pid, file, source })
        };
    let stat = read("stat")?;
    let status = read("status")?;
    let ticks = parse_stat_cpu_ticks(&stat).ok_or(ProcError::Format { pid, file: "stat" })?;
    let rss_kib = parse_status_kib(&status, "VmRSS").ok_or(ProcError::Format {
        pid,
        file: "status",
    })?;
    let hwm_kib = parse_status_kib(&status, "VmHWM").unwrap_or(rss_kib);
    Ok(ProcSample {
        cpu_s: ticks as f64 / clock_ticks_per_s(),
        rss_kib,
        hwm_kib,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_name_with_spaces() {
        let stat = "4242 (tcp integ) ran) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    731 269 0 0 20 0 3 0 12345 1000000 250 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(1000));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn status_kib_values() {
        let status = "Name:\ttcp-integration\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(10240));
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(20480));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 0);
        assert!(s.hwm_kib >= s.rss_kib);
    }
}
