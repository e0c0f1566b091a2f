//! What names and profile fields people and groups may have: pure checks.

use crate::error::ApiError;

/// Login shells must be absolute paths of plain characters.
pub fn valid_shell(s: &str) -> bool {
    s.starts_with('/')
        && s.len() <= 100
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '.'))
}

pub(crate) fn check_email(email: &str) -> Result<(), ApiError> {
    if email.len() > 254 || email.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ApiError::bad_request(
            "email must be one address of at most 254 characters",
        ));
    }
    Ok(())
}

/// `full_name` goes into the GECOS field on servers: no ':' or ','.
pub(crate) fn check_full_name(full_name: &str) -> Result<(), ApiError> {
    if full_name.len() > 100
        || full_name
            .chars()
            .any(|c| c.is_control() || c == ':' || c == ',')
    {
        return Err(ApiError::bad_request(
            "full_name must be at most 100 characters without ':' or ','",
        ));
    }
    Ok(())
}

pub(crate) fn check_profile(email: &str, full_name: &str, shell: &str) -> Result<(), ApiError> {
    check_email(email)?;
    check_full_name(full_name)?;
    if !valid_shell(shell) {
        return Err(ApiError::bad_request(format!(
            "shell must be an absolute path such as /bin/bash, not {shell:?}"
        )));
    }
    Ok(())
}

/// Names servers keep for themselves: system accounts and privileged
/// groups. A person or an Alpacon group with one of these names would be
/// that account or group on every server (an invitation claiming `root`, a
/// group called `shadow`), so none may be created with them.
const RESERVED: &[&str] = &[
    "root",
    "daemon",
    "bin",
    "sys",
    "sync",
    "games",
    "man",
    "lp",
    "mail",
    "news",
    "uucp",
    "proxy",
    "www-data",
    "backup",
    "list",
    "irc",
    "gnats",
    "nobody",
    "nogroup",
    "_apt",
    "messagebus",
    "sshd",
    "syslog",
    "uuidd",
    "tcpdump",
    "tss",
    "polkitd",
    "avahi",
    "postfix",
    "postgres",
    "mysql",
    "redis",
    "nginx",
    "ntp",
    "chrony",
    "dnsmasq",
    "sudo",
    "wheel",
    "adm",
    "shadow",
    "disk",
    "kmem",
    "tty",
    "dialout",
    "cdrom",
    "floppy",
    "tape",
    "audio",
    "video",
    "plugdev",
    "staff",
    "users",
    "input",
    "kvm",
    "render",
    "netdev",
    "docker",
    "lxd",
    "libvirt",
    "operator",
    "utmp",
    "voice",
    "src",
    "sasl",
    "crontab",
    "ssh",
    "ssl-cert",
    "systemd-journal",
    "alpacon-managed",
    "alpamon",
];

/// Whether `n` is a name servers keep for themselves ([`RESERVED`], or any
/// `systemd-` account).
pub fn reserved_name(n: &str) -> bool {
    RESERVED.contains(&n) || n.starts_with("systemd-")
}

/// A name for a new person (`what` = "username") or Alpacon group ("group
/// name"): valid as an account name on servers and not a reserved one.
pub fn check_new_name(what: &str, n: &str) -> Result<(), ApiError> {
    if !valid_username(n) {
        return Err(ApiError::bad_request(format!(
            "{what} must start with a lowercase letter or '_' and contain only a-z, 0-9, '_', '-', '.' (at most 32): it becomes a name on servers"
        )));
    }
    // `admin` is the initial superuser's name, but as a group it is sudo's
    // on older Ubuntu.
    if reserved_name(n) || (what != "username" && n == "admin") {
        return Err(ApiError::bad_request(format!(
            "{n:?} is a system name on servers; choose another {what}"
        )));
    }
    Ok(())
}

/// Usernames double as account names on servers, so they follow useradd's
/// rules.
pub fn valid_username(u: &str) -> bool {
    let mut chars = u.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && u.len() <= 32
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_people_and_groups_may_have() {
        // (name, a valid account name, reserved on servers)
        let long = "a".repeat(33);
        for (n, valid, reserved) in [
            ("alice", true, false),
            ("_svc", true, false),
            ("a.b-c_9", true, false),
            ("Alice", false, false),
            ("9lives", false, false),
            ("", false, false),
            (long.as_str(), false, false),
            ("root", true, true),
            ("systemd-network", true, true),
            ("alpacon-managed", true, true),
        ] {
            assert_eq!(valid_username(n), valid, "{n}");
            assert_eq!(reserved_name(n), reserved, "{n}");
            assert_eq!(
                check_new_name("username", n).is_ok(),
                valid && !reserved,
                "{n}"
            );
        }
        // `admin` is a person's name, but sudo's group on older Ubuntu.
        assert!(check_new_name("username", "admin").is_ok());
        assert!(check_new_name("group name", "admin").is_err());
    }

    #[test]
    fn profile_fields() {
        for (shell, ok) in [
            ("/bin/bash", true),
            ("/usr/bin/zsh", true),
            ("bash", false),
            ("/bin/ba sh", false),
            ("/bin/$(x)", false),
        ] {
            assert_eq!(valid_shell(shell), ok, "{shell}");
        }
        assert!(check_profile("a@b.c", "Alice Doe", "/bin/sh").is_ok());
        assert!(check_profile("a b@c", "", "/bin/sh").is_err());
        assert!(check_profile("", "Doe, Alice", "/bin/sh").is_err());
        assert!(check_profile("", "a:b", "/bin/sh").is_err());
        assert!(check_full_name(&"x".repeat(101)).is_err());
        assert!(check_email(&"x".repeat(255)).is_err());
    }
}
