//! The one wildcard syntax of ACL patterns, shared by the gateway (which
//! checks the path a client names) and the agent (which checks the real
//! path, symlinks resolved): `*` matches any run of characters, `/`
//! included; everything else matches itself.

/// Iterative with one backtrack point: linear-ish, no recursion blow-up on
/// many stars.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn stars_match_any_run_and_the_rest_is_literal() {
        assert!(glob_match("/opt/app/*", "/opt/app/a/b"));
        assert!(!glob_match("/opt/app/*", "/opt/app"));
        assert!(!glob_match("/opt/app/*", "/opt/application/x"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("docker ps", "docker ps"));
        assert!(!glob_match("docker ps", "docker ps -a"));
        // Many stars stay cheap.
        assert!(!glob_match(&"*a".repeat(50), &"a".repeat(40)));
    }
}
