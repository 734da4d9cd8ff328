//! Where the store lives: parsing a store URL and finding its password without ever putting the
//! password in the URL, a file the URL names, or a log line.
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::StoreError;

/// Environment variable holding the database password.
pub const PASSWORD_ENV: &str = "LATPLAN_DB_PASSWORD";
/// Environment variable naming a file (mode 0600 or stricter) whose first line is the password.
pub const PASSWORD_FILE_ENV: &str = "LATPLAN_DB_PASSWORD_FILE";

/// A parsed store location.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// An SQLite database file (created if missing).
    SqliteFile(PathBuf),
    /// A private in-memory SQLite database (tests).
    SqliteMemory,
    /// A MySQL or MariaDB database; `url` has no password in it.
    MySql { url: String },
}

impl FromStr for StoreUrl {
    type Err = StoreError;

    /// Accepts `sqlite:///abs/path.db`, `sqlite://rel/path.db`, `sqlite::memory:` and
    /// `mysql://user@host[:port]/db[?socket=...]`. A password inside a MySQL URL is refused:
    /// URLs end up in shell history, inventories and logs.
    fn from_str(s: &str) -> Result<StoreUrl, StoreError> {
        let bad = |why: &str| StoreError::Url {
            url: redact(s),
            why: why.to_string(),
        };
        if s == "sqlite::memory:" {
            return Ok(StoreUrl::SqliteMemory);
        }
        if let Some(path) = s
            .strip_prefix("sqlite://")
            .or_else(|| s.strip_prefix("sqlite:"))
        {
            if path.is_empty() {
                return Err(bad("no database file path after sqlite://"));
            }
            return Ok(StoreUrl::SqliteFile(PathBuf::from(path)));
        }
        if let Some(rest) = s
            .strip_prefix("mysql://")
            .or_else(|| s.strip_prefix("mariadb://"))
        {
            let authority = rest.split(['/', '?']).next().unwrap_or_default();
            if let Some((userinfo, _)) = authority.rsplit_once('@')
                && userinfo.contains(':')
            {
                return Err(bad(&format!(
                    "the URL carries a password; remove it and set {PASSWORD_ENV} or {PASSWORD_FILE_ENV} instead"
                )));
            }
            if !rest.contains('/') {
                return Err(bad("no database name (mysql://user@host/DATABASE)"));
            }
            return Ok(StoreUrl::MySql {
                url: format!("mysql://{rest}"),
            });
        }
        Err(bad(
            "unknown scheme; use sqlite:///path/to/file.db or mysql://user@host/db",
        ))
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::SqliteFile(p) => write!(f, "sqlite://{}", p.display()),
            StoreUrl::SqliteMemory => f.write_str("sqlite::memory:"),
            StoreUrl::MySql { url } => f.write_str(url),
        }
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A password that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The database password from [`PASSWORD_ENV`], else from the file named by [`PASSWORD_FILE_ENV`];
/// `None` when neither is set (socket or passwordless accounts).
pub fn password_from_env() -> Result<Option<Secret>, StoreError> {
    if let Ok(p) = std::env::var(PASSWORD_ENV) {
        return Ok(Some(Secret(p)));
    }
    match std::env::var_os(PASSWORD_FILE_ENV) {
        Some(path) => read_password_file(Path::new(&path)).map(Some),
        None => Ok(None),
    }
}

/// Reads a password file, refusing one that group or others may read.
pub fn read_password_file(path: &Path) -> Result<Secret, StoreError> {
    let err = |why: String| StoreError::PasswordFile {
        path: path.to_path_buf(),
        why,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(err(format!(
            "mode {mode:04o} lets others read it; chmod 600 it"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let line = text
        .lines()
        .next()
        .unwrap_or_default()
        .trim_end_matches('\r');
    if line.is_empty() {
        return Err(err("the file is empty".into()));
    }
    Ok(Secret(line.to_string()))
}

/// A URL safe to print: any `user:password@` becomes `user:***@`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_string()
            };
            format!("{scheme}://{masked}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_parse() {
        assert_eq!(
            "sqlite:///tmp/a.db".parse::<StoreUrl>().unwrap(),
            StoreUrl::SqliteFile("/tmp/a.db".into())
        );
        assert_eq!(
            "sqlite://rel.db".parse::<StoreUrl>().unwrap(),
            StoreUrl::SqliteFile("rel.db".into())
        );
        assert_eq!(
            "sqlite::memory:".parse::<StoreUrl>().unwrap(),
            StoreUrl::SqliteMemory
        );
        assert!("sqlite://".parse::<StoreUrl>().is_err());
    }

    #[test]
    fn mysql_url_with_password_is_refused_and_not_echoed() {
        let e = "mysql://u:hunter2@db/x"
            .parse::<StoreUrl>()
            .unwrap_err()
            .to_string();
        assert!(e.contains(PASSWORD_ENV), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        assert!(
            "mysql://u@127.0.0.1:3306/latplan"
                .parse::<StoreUrl>()
                .is_ok()
        );
        assert!("mysql://u@host".parse::<StoreUrl>().is_err());
        assert!("postgres://x/y".parse::<StoreUrl>().is_err());
    }

    #[test]
    fn redaction_masks_passwords_only() {
        assert_eq!(redact("mysql://u:p@h/db"), "mysql://u:***@h/db");
        assert_eq!(redact("rediss://u:p@h:6380"), "rediss://u:***@h:6380");
        assert_eq!(redact("mysql://u@h/db"), "mysql://u@h/db");
        assert_eq!(format!("{:?}", Secret::new("x")), "Secret(***)");
    }

    #[test]
    fn password_file_must_be_private() {
        let dir = std::env::temp_dir().join(format!("latplan-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            read_password_file(&f)
                .unwrap_err()
                .to_string()
                .contains("chmod 600")
        );
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_password_file(&f).unwrap().expose(), "s3cret");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
