//! What the agent tells the gateway about its machine at every connection.

use alpacon_proto::SystemInfo;

pub fn collect() -> SystemInfo {
    SystemInfo {
        hostname: hostname(),
        os: std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|s| os_pretty_name(&s))
            .unwrap_or_else(|| std::env::consts::OS.to_string()),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        arch: std::env::consts::ARCH.to_string(),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        memory_bytes: std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| mem_total(&s))
            .unwrap_or(0),
    }
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// `PRETTY_NAME` from an os-release file, unquoted.
fn os_pretty_name(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|l| {
        let v = l.strip_prefix("PRETTY_NAME=")?.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(v);
        (!v.is_empty()).then(|| v.to_string())
    })
}

/// `MemTotal` from /proc/meminfo, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_os_release() {
        let s = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n";
        assert_eq!(
            os_pretty_name(s).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(
            os_pretty_name("PRETTY_NAME=Alpine\n").as_deref(),
            Some("Alpine")
        );
        assert_eq!(os_pretty_name("ID=x\n"), None);
    }

    #[test]
    fn parses_meminfo() {
        let s = "MemTotal:       16318860 kB\nMemFree:         1 kB\n";
        assert_eq!(mem_total(s), Some(16318860 * 1024));
        assert_eq!(mem_total("nothing"), None);
    }

    #[test]
    fn collects_something() {
        let i = collect();
        assert!(!i.hostname.is_empty());
        assert!(i.cpus >= 1);
    }
}
