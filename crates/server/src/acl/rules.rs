//! The pure decision core of the ACLs (no I/O): command lines, servers,
//! files and terminals, and the validators used when an entry is created.

use alpacon_api::ErrorCode;

use crate::access::Refusal;

pub const CODE_COMMAND: ErrorCode = ErrorCode::AclCommandDenied;
pub const CODE_SERVER: ErrorCode = ErrorCode::AclServerDenied;
pub const CODE_FILE: ErrorCode = ErrorCode::AclFileDenied;

/// The only characters a command line may contain when the token has a
/// command ACL: letters, digits, the space and `-_./:=,@%+`. Everything a
/// shell gives meaning to (`; & | $ \` ( ) < > { } [ ] * ? ~ # ! ' " \`,
/// tabs, newlines, other control and non-ASCII characters) is refused.
fn plain_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == ' ' || "-_./:=,@%+".contains(c)
}

/// Checks that `line` is plain words a shell runs as one command, exactly:
/// no shell syntax, single spaces between words, no leading or trailing
/// space, and no `NAME=value` prefix.
pub fn check_line_syntax(line: &str) -> Result<(), String> {
    if line.is_empty() {
        return Err("the command line is empty".into());
    }
    if let Some(c) = line.chars().find(|&c| !plain_char(c)) {
        return Err(format!(
            "the command line contains {c:?}: this token may only run plain commands (letters, digits, spaces and -_./:=,@%+), \
             without shell syntax that could run or change something else (; & | $ ` ( ) < > quotes, globs, redirections, newlines…)"
        ));
    }
    if line.starts_with(' ') || line.ends_with(' ') || line.contains("  ") {
        return Err(
            "the command line must have single spaces between words and none at either end".into(),
        );
    }
    let first = line.split(' ').next().unwrap_or("");
    if first.contains('=') {
        return Err(format!(
            "the command line starts with the variable assignment {first:?}, which this token may not use"
        ));
    }
    Ok(())
}

/// A command pattern as stored: words separated by single spaces, made of
/// the plain characters plus `*`; the first word is no assignment.
pub fn validate_command_pattern(pattern: &str) -> Result<String, String> {
    let canonical = pattern.split_whitespace().collect::<Vec<_>>().join(" ");
    if canonical.is_empty() || canonical.len() > 1000 {
        return Err("a command pattern must be 1 to 1000 characters".into());
    }
    if let Some(c) = canonical.chars().find(|&c| !plain_char(c) && c != '*') {
        return Err(format!(
            "a command pattern may contain only letters, digits, spaces, -_./:=,@%+ and the wildcard *, not {c:?}: \
             lines with shell syntax are always refused, so such a pattern could never match"
        ));
    }
    if canonical.split(' ').next().unwrap_or("").contains('=') {
        return Err("a command pattern may not start with a variable assignment".into());
    }
    Ok(canonical)
}

pub use alpacon_proto::glob_match;

/// One command ACL entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandAcl {
    pub pattern: String,
    pub username: Option<String>,
    /// The primary group commands may run with; `None`: only the account's
    /// own default group (no `groupname` in the request).
    pub groupname: Option<String>,
}

impl CommandAcl {
    fn admits(&self, username: &str, groupname: Option<&str>) -> bool {
        self.username.as_deref().is_none_or(|u| u == username)
            && self.groupname.as_deref() == groupname
    }
}

/// May a token with `acls` run `line` as `username` with primary group
/// `groupname` (with environment variables if `has_env`)? No entries: yes.
pub fn check_command(
    acls: &[CommandAcl],
    line: &str,
    username: &str,
    groupname: Option<&str>,
    has_env: bool,
) -> Result<(), Refusal> {
    if acls.is_empty() {
        return Ok(());
    }
    check_line_syntax(line).map_err(|d| Refusal::new(CODE_COMMAND, d))?;
    if has_env {
        return Err(Refusal::new(
            CODE_COMMAND,
            "this token has a command ACL and may not set environment variables; drop `env`",
        ));
    }
    let matching: Vec<&CommandAcl> = acls
        .iter()
        .filter(|a| glob_match(&a.pattern, line))
        .collect();
    if matching.is_empty() {
        return Err(Refusal::new(
            CODE_COMMAND,
            format!(
                "this token may not run {line:?}: it matches none of the token's {} command ACL(s); \
                 see `alpacon token acl command ls TOKEN` and add a pattern with `alpacon token acl command add`",
                acls.len()
            ),
        ));
    }
    if matching.iter().any(|a| a.admits(username, groupname)) {
        return Ok(());
    }
    let as_whom: Vec<String> = matching
        .iter()
        .map(|a| {
            let user = a.username.as_deref().unwrap_or("any account");
            match &a.groupname {
                Some(g) => format!("{user} with group {g}"),
                None => user.to_string(),
            }
        })
        .collect();
    let asked = match groupname {
        Some(g) => format!("{username:?} with group {g:?}"),
        None => format!("{username:?}"),
    };
    Err(Refusal::new(
        CODE_COMMAND,
        format!(
            "this token may run {line:?} only as {}, not as {asked}; pass `username` (and `groupname`) accordingly",
            as_whom.join(" or ")
        ),
    ))
}

/// May a token with server ACL `allowed` (server ids) reach this server?
pub fn check_server(allowed: &[String], server_id: &str, server_name: &str) -> Result<(), Refusal> {
    if allowed.is_empty() || allowed.iter().any(|s| s == server_id) {
        return Ok(());
    }
    Err(Refusal::new(
        CODE_SERVER,
        format!(
            "this token may not reach server {server_name}; see `alpacon token acl server ls TOKEN` \
             and add it with `alpacon token acl server add`"
        ),
    ))
}

/// A token with any command ACL gets no terminal: a shell would bypass the
/// list.
pub fn check_terminal(command_acls: usize) -> Result<(), Refusal> {
    if command_acls == 0 {
        return Ok(());
    }
    Err(Refusal::new(
        CODE_COMMAND,
        "this token is limited to the commands in its command ACL, so it may not use a terminal; \
         run allowed commands with `alpacon exec` instead",
    ))
}

/// The operation a file ACL entry allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileAction {
    Upload,
    Download,
    Any,
}

impl FileAction {
    pub fn parse(s: &str) -> Option<FileAction> {
        match s {
            "upload" => Some(FileAction::Upload),
            "download" => Some(FileAction::Download),
            "*" | "any" => Some(FileAction::Any),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FileAction::Upload => "upload",
            FileAction::Download => "download",
            FileAction::Any => "*",
        }
    }

    pub(super) fn allows(self, op: FileOp) -> bool {
        matches!(
            (self, op.action()),
            (FileAction::Any, _)
                | (FileAction::Upload, FileAction::Upload)
                | (FileAction::Download, FileAction::Download)
        )
    }
}

/// A file operation: mkdir counts as an upload, stat as a download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOp {
    Upload,
    Download,
    Mkdir,
    Stat,
}

impl FileOp {
    pub fn action(self) -> FileAction {
        match self {
            FileOp::Upload | FileOp::Mkdir => FileAction::Upload,
            FileOp::Download | FileOp::Stat => FileAction::Download,
        }
    }

    /// The audit action of the operation.
    pub fn audit_action(self) -> &'static str {
        match self {
            FileOp::Upload => "file.upload",
            FileOp::Download => "file.download",
            FileOp::Mkdir => "file.mkdir",
            FileOp::Stat => "file.stat",
        }
    }
}

/// Normalises an absolute path: `//` and `.` segments go, a trailing `/`
/// goes; relative paths, `..` segments and control characters are refused.
/// Used for paths and for file ACL patterns alike (`*` is kept as is).
pub fn normalize_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} is not an absolute path"));
    }
    if path.chars().any(char::is_control) {
        return Err("the path contains control characters".into());
    }
    let mut segs = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => return Err(format!("{path:?} contains a `..` segment")),
            s => segs.push(s),
        }
    }
    Ok(format!("/{}", segs.join("/")))
}

/// A token limited to a command ACL may not upload (nor mkdir) unless a
/// file ACL says where: an upload could replace what an allowed command
/// runs (a binary, a config, a `~/.profile`). Downloads stay open.
pub fn check_upload_allowed(
    command_acls: usize,
    file_acls: usize,
    op: FileOp,
) -> Result<(), Refusal> {
    if command_acls == 0 || file_acls > 0 || op.action() != FileAction::Upload {
        return Ok(());
    }
    Err(Refusal::new(
        CODE_FILE,
        "this token is limited to the commands in its command ACL, and an upload could change what they run; \
         allow uploads to specific paths with `alpacon token acl file add`",
    ))
}

/// One file ACL entry: `pattern` is a normalised absolute path where `*`
/// matches any run of characters, `/` included (`/opt/app/*` covers
/// everything below `/opt/app`, not `/opt/app` itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileAcl {
    pub pattern: String,
    pub action: FileAction,
}

/// May a token with `acls` do `op` on `path` (with primary group
/// `groupname`)? No entries: yes. File ACL entries name no group, so a token
/// with one transfers only with the account's own default group.
pub fn check_file(
    acls: &[FileAcl],
    path: &str,
    groupname: Option<&str>,
    op: FileOp,
) -> Result<(), Refusal> {
    if acls.is_empty() {
        return Ok(());
    }
    if let Some(g) = groupname {
        return Err(Refusal::new(
            CODE_FILE,
            format!(
                "this token has a file ACL and transfers files only with the account's own group, not {g:?}; drop `groupname`"
            ),
        ));
    }
    let norm = normalize_path(path).map_err(|d| {
        Refusal::new(
            CODE_FILE,
            format!("{d}; this token's file ACL needs a plain absolute path"),
        )
    })?;
    if acls
        .iter()
        .any(|a| a.action.allows(op) && glob_match(&a.pattern, &norm))
    {
        return Ok(());
    }
    let verb = op.action().as_str();
    Err(Refusal::new(
        CODE_FILE,
        format!(
            "this token may not {verb} {norm} (as {op:?}): no file ACL allows it; see `alpacon token acl file ls TOKEN` \
             and add one with `alpacon token acl file add`"
        ),
    ))
}

/// Whose operations (commands, transfers, terminals) a caller may read.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub user_id: String,
    pub admin: bool,
    /// A token with any ACL reads only what it did itself: it may reach
    /// only some servers or commands, and the output of what its owner ran
    /// elsewhere (`head /etc/shadow` in a session) is not for it.
    pub only_token: Option<String>,
}

impl Viewer {
    /// Whether an operation by `user` (with `token`) is visible.
    pub fn sees(&self, user: Option<&str>, token: Option<&str>) -> bool {
        match &self.only_token {
            Some(t) => token == Some(t.as_str()),
            None => self.admin || user == Some(self.user_id.as_str()),
        }
    }

    /// The same as list filters: `(requested by, token)`, `None` for any.
    pub fn filter(&self) -> (Option<&str>, Option<&str>) {
        match &self.only_token {
            Some(t) => (None, Some(t.as_str())),
            None if self.admin => (None, None),
            None => (Some(self.user_id.as_str()), None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(p: &str) -> CommandAcl {
        CommandAcl {
            pattern: validate_command_pattern(p).unwrap(),
            username: None,
            groupname: None,
        }
    }

    fn acl_as(p: &str, u: &str) -> CommandAcl {
        CommandAcl {
            username: Some(u.into()),
            ..acl(p)
        }
    }

    fn allowed(acls: &[CommandAcl], line: &str) -> bool {
        check_command(acls, line, "deploy", None, false).is_ok()
    }

    #[test]
    fn no_command_acl_allows_anything() {
        assert!(check_command(&[], "anything; goes | here", "root", None, true).is_ok());
    }

    #[test]
    fn exact_and_wildcard_matches() {
        let acls = [
            acl("docker ps"),
            acl("docker compose -p my-app *"),
            acl("systemctl status *"),
            acl("docker logs my-*"),
        ];
        for ok in [
            "docker ps",
            "docker compose -p my-app up",
            "docker compose -p my-app up -d --remove-orphans",
            "docker compose -p my-app logs --tail=100",
            "systemctl status nginx",
            "systemctl status nginx.service sshd",
            "docker logs my-app",
        ] {
            assert!(allowed(&acls, ok), "{ok}");
        }
        for no in [
            "id",
            "docker ps -a",
            "docker",
            "docker psx",
            "xdocker ps",
            "docker compose -p other-app up",
            "docker compose -p my-app",
            "systemctl status",
            "systemctl restart nginx",
            "docker logs other",
            "docker rm my-app",
        ] {
            let e = check_command(&acls, no, "deploy", None, false).unwrap_err();
            assert_eq!(e.code, CODE_COMMAND, "{no}");
        }
    }

    #[test]
    fn shell_syntax_never_passes_a_pattern() {
        let acls = [acl("docker ps"), acl("docker ps *"), acl("echo *")];
        for line in [
            "docker ps; rm -rf /",
            "docker ps;id",
            "docker ps && id",
            "docker ps & id",
            "docker ps || id",
            "docker ps | sh",
            "docker ps $(id)",
            "docker ps ${IFS}",
            "docker ps $HOME",
            "docker ps `id`",
            "docker ps > /etc/passwd",
            "docker ps >> /etc/passwd",
            "docker ps < /etc/shadow",
            "docker ps 2>&1",
            "docker ps\nid",
            "docker ps\rid",
            "docker ps\n",
            "docker ps #",
            "docker ps #; id",
            "docker ps *",
            "docker ps ?",
            "docker ps [a]",
            "docker ps ~root",
            "docker ps {a,b}",
            "docker ps (id)",
            "docker ps 'x'",
            "docker ps \"x\"",
            "docker ps \\; id",
            "docker ps \\",
            "docker ps !!",
            "docker ps ^",
            "FOO=1 docker ps",
            "PATH=/tmp docker ps",
            " docker ps",
            "docker ps ",
            "docker  ps",
            "docker\tps",
            "\tdocker ps",
            "docker ps\0",
            "docker ps \u{a0}",
            "docker ps ；id",
            "echo $(id)",
            "echo ok\nid",
            "",
        ] {
            let e = check_command(&acls, line, "deploy", None, false).unwrap_err();
            assert_eq!(e.code, CODE_COMMAND, "{line:?}");
        }
        // Plain arguments with the allowed punctuation are fine.
        for line in [
            "docker ps --format=table",
            "docker ps -f name=web,status=up",
            "echo user@host:/opt/a+b%2",
        ] {
            assert!(allowed(&acls, line), "{line}");
        }
    }

    #[test]
    fn env_is_refused_with_a_command_acl() {
        let e = check_command(&[acl("docker ps")], "docker ps", "deploy", None, true).unwrap_err();
        assert!(e.detail.contains("environment"));
    }

    #[test]
    fn account_restriction() {
        let acls = [acl_as("docker ps", "deploy"), acl("uptime")];
        assert!(check_command(&acls, "docker ps", "deploy", None, false).is_ok());
        let e = check_command(&acls, "docker ps", "root", None, false).unwrap_err();
        assert_eq!(e.code, CODE_COMMAND);
        assert!(e.detail.contains("deploy"), "{}", e.detail);
        assert!(check_command(&acls, "uptime", "root", None, false).is_ok());
        // Two entries for the same line with different accounts.
        let acls = [acl_as("docker ps", "a"), acl_as("docker ps", "b")];
        assert!(check_command(&acls, "docker ps", "b", None, false).is_ok());
        assert!(check_command(&acls, "docker ps", "c", None, false).is_err());
    }

    #[test]
    fn a_restricted_token_reads_only_what_it_did() {
        let person = Viewer {
            user_id: "u".into(),
            admin: false,
            only_token: None,
        };
        assert!(person.sees(Some("u"), None));
        assert!(person.sees(Some("u"), Some("t2")));
        assert!(!person.sees(Some("v"), None));
        let admin = Viewer {
            admin: true,
            ..person.clone()
        };
        assert!(admin.sees(Some("v"), None));
        let token = Viewer {
            admin: true,
            only_token: Some("t1".into()),
            ..person.clone()
        };
        assert!(token.sees(Some("u"), Some("t1")));
        assert!(!token.sees(Some("u"), None), "its owner's session");
        assert!(!token.sees(Some("u"), Some("t2")), "another token");
        assert_eq!(token.filter(), (None, Some("t1")));
        assert_eq!(person.filter(), (Some("u"), None));
        assert_eq!(admin.filter(), (None, None));
    }

    #[test]
    fn group_restriction() {
        // An entry without a group admits only the account's own group.
        let acls = [acl_as("docker ps", "deploy")];
        assert!(check_command(&acls, "docker ps", "deploy", None, false).is_ok());
        let e = check_command(&acls, "docker ps", "deploy", Some("root"), false).unwrap_err();
        assert!(e.detail.contains("\"root\""), "{}", e.detail);
        let any = [acl("uptime")];
        assert!(check_command(&any, "uptime", "deploy", Some("shadow"), false).is_err());
        let with_group = [CommandAcl {
            groupname: Some("docker".into()),
            ..acl_as("docker ps", "deploy")
        }];
        assert!(check_command(&with_group, "docker ps", "deploy", Some("docker"), false).is_ok());
        assert!(check_command(&with_group, "docker ps", "deploy", None, false).is_err());
        assert!(check_command(&with_group, "docker ps", "deploy", Some("root"), false).is_err());
        // File ACLs name no group.
        let files = [FileAcl {
            pattern: "/opt/*".into(),
            action: FileAction::Any,
        }];
        assert!(check_file(&files, "/opt/x", None, FileOp::Upload).is_ok());
        assert!(check_file(&files, "/opt/x", Some("root"), FileOp::Upload).is_err());
        assert!(check_file(&[], "/opt/x", Some("root"), FileOp::Upload).is_ok());
    }

    #[test]
    fn patterns_are_validated_and_canonical() {
        assert_eq!(
            validate_command_pattern("  docker   compose\t-p x *  ").unwrap(),
            "docker compose -p x *"
        );
        for bad in [
            "",
            "   ",
            "docker ps; id",
            "docker ps | sh",
            "echo $HOME",
            "FOO=1 docker ps",
            "docker 'ps'",
            "docker ps > x",
        ] {
            assert!(validate_command_pattern(bad).is_err(), "{bad}");
        }
        assert!(validate_command_pattern(&"a".repeat(1001)).is_err());
        assert!(validate_command_pattern("*").is_ok());
    }

    #[test]
    fn glob() {
        assert!(glob_match("", ""));
        assert!(!glob_match("", "a"));
        assert!(glob_match("*", ""));
        assert!(glob_match("*", "anything at all"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(glob_match("a*b*c", "abc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("a**", "a"));
        assert!(!glob_match("abc", "ab"));
        assert!(!glob_match("ab", "abc"));
        assert!(glob_match("*.log", "x/y.log"));
        // Many stars do not blow up.
        let p = "*a".repeat(30);
        assert!(!glob_match(&p, &"a".repeat(29)));
        assert!(glob_match(&p, &"a".repeat(40)));
    }

    #[test]
    fn server_acl() {
        assert!(check_server(&[], "s1", "web").is_ok());
        let allowed = vec!["s1".to_string(), "s2".to_string()];
        assert!(check_server(&allowed, "s2", "db").is_ok());
        let e = check_server(&allowed, "s3", "mail").unwrap_err();
        assert_eq!(e.code, CODE_SERVER);
        assert!(e.detail.contains("mail"));
    }

    #[test]
    fn uploads_need_a_file_acl_once_commands_are_limited() {
        assert!(check_upload_allowed(0, 0, FileOp::Upload).is_ok());
        assert!(check_upload_allowed(1, 1, FileOp::Upload).is_ok());
        assert!(check_upload_allowed(1, 0, FileOp::Download).is_ok());
        assert!(check_upload_allowed(1, 0, FileOp::Stat).is_ok());
        assert_eq!(
            check_upload_allowed(1, 0, FileOp::Upload).unwrap_err().code,
            CODE_FILE
        );
        assert_eq!(
            check_upload_allowed(2, 0, FileOp::Mkdir).unwrap_err().code,
            CODE_FILE
        );
    }

    #[test]
    fn terminals_are_refused_with_a_command_acl() {
        assert!(check_terminal(0).is_ok());
        assert_eq!(check_terminal(1).unwrap_err().code, CODE_COMMAND);
    }

    #[test]
    fn paths_are_normalised() {
        assert_eq!(normalize_path("/").unwrap(), "/");
        assert_eq!(normalize_path("//opt/./app//x/").unwrap(), "/opt/app/x");
        for bad in [
            "opt/app",
            "",
            "./x",
            "/opt/app/../../etc/passwd",
            "/opt/..",
            "/a\nb",
            "/a\0b",
        ] {
            assert!(normalize_path(bad).is_err(), "{bad:?}");
        }
        assert_eq!(normalize_path("/opt/my-app/*").unwrap(), "/opt/my-app/*");
    }

    #[test]
    fn file_acl() {
        let fa = |p: &str, a: FileAction| FileAcl {
            pattern: normalize_path(p).unwrap(),
            action: a,
        };
        assert!(check_file(&[], "/etc/shadow", None, FileOp::Upload).is_ok());
        let acls = [
            fa("/opt/my-app/*", FileAction::Download),
            fa("/srv/in/*", FileAction::Upload),
            fa("/data/*.csv", FileAction::Any),
        ];
        let ok = |p: &str, op| check_file(&acls, p, None, op).is_ok();
        assert!(ok("/opt/my-app/config.yml", FileOp::Download));
        assert!(ok("/opt/my-app/sub/dir/x", FileOp::Stat));
        assert!(ok("//opt/my-app/./x", FileOp::Download));
        assert!(!ok("/opt/my-app/x", FileOp::Upload));
        assert!(!ok("/opt/my-app/x", FileOp::Mkdir));
        assert!(!ok("/opt/my-app", FileOp::Download));
        assert!(!ok("/opt/my-app/../../etc/passwd", FileOp::Download));
        assert!(!ok("/opt/my-app/x/../../../etc", FileOp::Stat));
        assert!(!ok("opt/my-app/x", FileOp::Download));
        assert!(!ok("/opt/my-appx/y", FileOp::Download));
        assert!(!ok("/etc/passwd", FileOp::Download));
        assert!(ok("/srv/in/upload.tar", FileOp::Upload));
        assert!(ok("/srv/in/new", FileOp::Mkdir));
        assert!(!ok("/srv/in/upload.tar", FileOp::Download));
        assert!(ok("/data/a.csv", FileOp::Upload));
        assert!(ok("/data/a.csv", FileOp::Download));
        assert!(!ok("/data/a.txt", FileOp::Download));
        let e = check_file(&acls, "/etc/passwd", None, FileOp::Download).unwrap_err();
        assert_eq!(e.code, CODE_FILE);
        // The "unknown stored action" placeholder allows nothing.
        let placeholder = [FileAcl {
            pattern: String::new(),
            action: FileAction::Any,
        }];
        assert!(check_file(&placeholder, "/", None, FileOp::Download).is_err());
        assert_eq!(FileAction::parse("*"), Some(FileAction::Any));
        assert_eq!(FileAction::parse("delete"), None);
    }
}
