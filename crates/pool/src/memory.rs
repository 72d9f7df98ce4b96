//! Resident memory of an instance process, read from `/proc/<pid>/status` (`VmRSS`), for the
//! memory budget. Owns nothing else; cgroup figures from the sandbox can replace it later.

/// Resident set size of `pid` in bytes, or `None` if the process is gone or unreadable.
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_vm_rss() {
        let s = "Name:\tdeno\nVmPeak:\t  100 kB\nVmRSS:\t   31744 kB\nThreads: 4\n";
        assert_eq!(super::parse_vm_rss(s), Some(31744 * 1024));
        assert_eq!(super::parse_vm_rss("Name: x\n"), None);
        assert!(super::rss_bytes(std::process::id()).is_some_and(|b| b > 0));
    }
}
