//! Checks of single values (addresses, interface names, paths) and typed deserialisation of nodes
//! with errors that keep their file:line:column.
use std::net::IpAddr;

use marked_yaml::{Node, Span, Spanned};
use serde::de::DeserializeOwned;

use super::error::{InventoryError, Result};
use super::source::Sources;

/// Deserialises `node` into `T`, turning serde errors into located inventory errors.
/// `what` names the thing (e.g. "host `vm1`"); `hint_for` adds a hint for an unknown key.
pub fn from_node<T: DeserializeOwned>(
    src: &Sources,
    node: &Node,
    what: &str,
    hint_for: impl Fn(&str) -> Option<String>,
) -> Result<T> {
    marked_yaml::from_node::<T>(node).map_err(|e| {
        // Errors raised without a span (serde's own) fall back to the node being read.
        let loc = e
            .start_mark()
            .map(|m| src.marker(&m))
            .or_else(|| src.locate(node.span()));
        let what = match e.path() {
            Some(path) => format!("{what}, `{path}`"),
            None => what.to_string(),
        };
        match &*e {
            marked_yaml::Error::UnknownFieldError(field, expected, _) => {
                let hint = hint_for(field)
                    .unwrap_or_else(|| format!("known keys: {}", expected.join(", ")));
                InventoryError::new(loc, format!("unknown key `{field}` in {what}")).hint(hint)
            }
            marked_yaml::Error::NotBoolean(_) => {
                InventoryError::new(loc, format!("{what}: expected true or false"))
            }
            other => {
                InventoryError::new(loc, format!("{what}: {}", lower_first(&other.to_string())))
            }
        }
    })
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Refuses keys of `node` (a mapping) not in `allowed`, pointing at the key itself. Done before
/// serde so the location is exact even after merging.
pub fn check_keys(
    src: &Sources,
    node: &Node,
    allowed: &[&str],
    what: &str,
    hint_for: impl Fn(&str) -> Option<String>,
) -> Result<()> {
    let Some(m) = node.as_mapping() else {
        return Ok(());
    };
    for (k, _) in m.iter() {
        if !allowed.contains(&k.as_str()) {
            let hint = hint_for(k.as_str())
                .unwrap_or_else(|| format!("known keys: {}", allowed.join(", ")));
            return Err(src
                .error(k.span(), format!("unknown key `{}` in {what}", k.as_str()))
                .hint(hint));
        }
    }
    Ok(())
}

/// A Linux interface name: 1–15 bytes, no `/`, `:` or whitespace, not `.` or `..`.
pub fn check_ifname(src: &Sources, v: &Spanned<String>) -> Result<String> {
    let s = v.as_str();
    let ok = !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(s.to_string())
    } else {
        Err(src
            .error(v.span(), format!("invalid interface name `{s}`"))
            .hint("Linux interface names are 1 to 15 characters without `/`, `:` or spaces (see `ip -br link`)"))
    }
}

pub fn check_ip(src: &Sources, v: &Spanned<String>) -> Result<IpAddr> {
    v.as_str().parse::<IpAddr>().map_err(|_| {
        src.error(v.span(), format!("invalid IP address `{}`", v.as_str()))
            .hint("write one IPv4 or IPv6 address per entry, without a prefix length (10.0.0.2, fd00::2)")
    })
}

/// An SSH target: an IP address or a DNS name.
pub fn check_address(src: &Sources, v: &Spanned<String>) -> Result<String> {
    let s = v.as_str();
    if s.parse::<IpAddr>().is_ok() {
        return Ok(s.to_string());
    }
    let err = |why: &str, hint: &str| {
        src.error(v.span(), format!("invalid address `{s}`: {why}"))
            .hint(hint.to_string())
    };
    if s.contains('@') {
        return Err(err(
            "it holds a user",
            "put the user in `ssh: {user: NAME}` and only the host in `address`",
        ));
    }
    if s.contains(':') {
        return Err(err(
            "it holds a port",
            "put the port in `ssh: {port: N}` and only the host in `address`",
        ));
    }
    if s.contains('/') {
        return Err(err(
            "it holds a prefix length",
            "write the address without `/NN`",
        ));
    }
    if is_dns_name(s) {
        Ok(s.to_string())
    } else {
        Err(err(
            "not an IP address or DNS name",
            "use an IPv4/IPv6 address or a host name (letters, digits, `-`, dots)",
        ))
    }
}

fn is_dns_name(s: &str) -> bool {
    // A name made only of digits and dots is a mistyped IPv4 address, not a name.
    if s.is_empty() || s.len() > 253 || s.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return false;
    }
    s.trim_end_matches('.').split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    })
}

/// An absolute directory that is ours alone (teardown deletes it): not `/`, no `..`.
pub fn check_install_dir(src: &Sources, v: &Spanned<String>) -> Result<std::path::PathBuf> {
    let s = v.as_str();
    let p = std::path::Path::new(s);
    let bad = !p.is_absolute()
        || p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        || p.components().count() < 2
        || s.chars().any(|c| c.is_whitespace() || c.is_control());
    if bad {
        return Err(src
            .error(v.span(), format!("invalid install_dir `{s}`"))
            .hint("use an absolute directory of its own without spaces or `..`, e.g. /var/lib/latplan (teardown removes it whole)"));
    }
    Ok(p.to_path_buf())
}

/// Plain names (clock domains, netns, ssh user, config alias): no spaces, no shell or path specials.
pub fn check_word(src: &Sources, v: &Spanned<String>, what: &str) -> Result<String> {
    let s = v.as_str();
    let ok = !s.is_empty()
        && s.len() <= 255
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | '+'))
        && s != "."
        && s != "..";
    if ok {
        Ok(s.to_string())
    } else {
        Err(src
            .error(v.span(), format!("invalid {what} `{s}`"))
            .hint("use letters, digits, `-`, `_`, `.`, `@` and `+` only"))
    }
}

/// A file path as given (`~/` is expanded when used, not here).
pub fn check_path(src: &Sources, v: &Spanned<String>, what: &str) -> Result<std::path::PathBuf> {
    let s = v.as_str();
    if s.is_empty() || s.chars().any(|c| c.is_control()) {
        return Err(src.error(v.span(), format!("invalid {what} `{s}`")));
    }
    Ok(s.into())
}

/// Converts an opaque node (lab, params) to JSON: plain scalars get YAML's types, quoted ones stay strings.
pub fn to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value;
    match node {
        Node::Scalar(s) => {
            let v = s.as_str();
            if !s.may_coerce() {
                return Value::String(v.to_string());
            }
            match v {
                "" | "~" | "null" | "Null" | "NULL" => Value::Null,
                "true" | "True" | "TRUE" => Value::Bool(true),
                "false" | "False" | "FALSE" => Value::Bool(false),
                _ => {
                    if let Ok(i) = v.parse::<i64>() {
                        Value::from(i)
                    } else if let Ok(u) = v.parse::<u64>() {
                        Value::from(u)
                    } else if let Some(f) = v
                        .parse::<f64>()
                        .ok()
                        .filter(|f| f.is_finite() && looks_like_float(v))
                    {
                        Value::from(f)
                    } else {
                        Value::String(v.to_string())
                    }
                }
            }
        }
        Node::Sequence(s) => Value::Array(s.iter().map(to_json).collect()),
        Node::Mapping(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.as_str().to_string(), to_json(v)))
                .collect(),
        ),
    }
}

// "1e3" and "1.5" are floats in YAML; "inf", "nan" and "1_000" are strings here.
fn looks_like_float(v: &str) -> bool {
    v.chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
        && v.chars().any(|c| c.is_ascii_digit())
}

/// Parses `0`, `250us`, `10ms`, `1s`, `500ns` into nanoseconds.
pub fn parse_duration_ns(s: &str) -> Option<u64> {
    let s = s.trim();
    if s == "0" {
        return Some(0);
    }
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mul = match unit.trim() {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mul)
}

/// The closest candidate by edit distance, for "did you mean" hints.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(1))
        .min()
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A span-less value (for building nodes in code, e.g. defaults).
pub fn blank() -> Span {
    Span::new_blank()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ns("0"), Some(0));
        assert_eq!(parse_duration_ns("250us"), Some(250_000));
        assert_eq!(parse_duration_ns("10ms"), Some(10_000_000));
        assert_eq!(parse_duration_ns("2s"), Some(2_000_000_000));
        assert_eq!(parse_duration_ns("10"), None, "a unit is required");
        assert_eq!(parse_duration_ns("ms"), None);
    }

    #[test]
    fn dns_names() {
        assert!(is_dns_name("metal1.example.org"));
        assert!(!is_dns_name("10.0.0.300"));
        assert!(!is_dns_name("-bad.example"));
        assert!(!is_dns_name("has space"));
    }

    #[test]
    fn closest_names() {
        assert_eq!(
            closest("metl1", ["metal1", "metal2", "vm1"]),
            Some("metal1")
        );
        assert_eq!(closest("zzz", ["metal1"]), None);
    }
}
