//! String rewriting that stands in for the container's mount and network namespaces, and
//! the kubelet's `$(VAR)` expansion.

use std::collections::HashMap;

/// Expands `$(VAR)` references the way the kubelet does for command, args and env values:
/// a defined variable is replaced, an undefined reference stays as written, and `$$` is an
/// escaped `$` (so `$$(VAR)` yields the literal `$(VAR)`).
pub fn expand_vars(input: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let name = &body[..end];
                    match vars.get(name) {
                        Some(value) => out.push_str(value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = body;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// One container path (a `volumeMount.mountPath`, with a subPath already resolved on the
/// local side) and the local directory or file that stands for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub container_path: String,
    pub local_path: String,
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | '~' | '+' | '@')
}

/// Sorts mounts so the longest container path is tried first, drops duplicates and the
/// root path (rewriting every `/` would make no sense).
pub fn normalise_mounts(mut mounts: Vec<Mount>) -> Vec<Mount> {
    for m in &mut mounts {
        while m.container_path.len() > 1 && m.container_path.ends_with('/') {
            m.container_path.pop();
        }
    }
    mounts.retain(|m| m.container_path.starts_with('/') && m.container_path != "/");
    mounts.sort_by(|a, b| {
        b.container_path
            .len()
            .cmp(&a.container_path.len())
            .then_with(|| a.container_path.cmp(&b.container_path))
    });
    mounts.dedup_by(|a, b| a.container_path == b.container_path);
    mounts
}

/// Replaces each container mount path that starts a path in `input` (the character before
/// is not part of a path, the one after ends the component) by its local path. One pass,
/// longest mount first, so a replaced path is never rewritten again.
pub fn rewrite_paths(input: &str, mounts: &[Mount]) -> String {
    if mounts.is_empty() {
        return input.to_owned();
    }
    let mut out = String::with_capacity(input.len());
    let mut i = 0;
    let mut prev: Option<char> = None;
    'outer: while i < input.len() {
        let rest = &input[i..];
        if prev.is_none_or(|c| !is_path_char(c)) {
            for m in mounts {
                if let Some(after) = rest.strip_prefix(m.container_path.as_str()) {
                    let next = after.chars().next();
                    if next.is_none_or(|c| c == '/' || !is_path_char(c)) {
                        out.push_str(&m.local_path);
                        i += m.container_path.len();
                        prev = m.container_path.chars().last();
                        continue 'outer;
                    }
                }
            }
        }
        let c = rest.chars().next().expect("non-empty");
        out.push(c);
        prev = Some(c);
        i += c.len_utf8();
    }
    out
}

/// Turns wildcard binds `0.0.0.0:PORT` and `[::]:PORT` into `<ip>:PORT`: without a network
/// namespace, a wildcard bind would take the port on every address of the machine.
pub fn rewrite_wildcard_binds(input: &str, ip: &str) -> String {
    let mut out = String::with_capacity(input.len());
    let mut i = 0;
    let bytes = input.as_bytes();
    while i < input.len() {
        let rest = &input[i..];
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_digit() || bytes[i - 1] == b'.');
        if boundary {
            let pattern = ["0.0.0.0:", "[::]:"].into_iter().find(|p| {
                rest.starts_with(p) && rest[p.len()..].starts_with(|c: char| c.is_ascii_digit())
            });
            if let Some(p) = pattern {
                out.push_str(ip);
                out.push(':');
                i += p.len();
                continue;
            }
        }
        let c = rest.chars().next().expect("non-empty");
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// Both rewrites, as applied to args, env values and ConfigMap file text: wildcard binds
/// become the loopback twin of `pod_ip`, where the Pod's processes listen.
pub fn rewrite(input: &str, mounts: &[Mount], pod_ip: &str) -> String {
    let bind = match pod_ip.parse() {
        Ok(ip) => bridge_e2e::loopback_twin(ip).to_string(),
        Err(_) => pod_ip.to_owned(),
    };
    rewrite_wildcard_binds(&rewrite_paths(input, mounts), &bind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> HashMap<String, String> {
        [("A", "1"), ("POD", "web-0")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn expansion_follows_the_kubelet() {
        assert_eq!(expand_vars("x-$(POD)-$(A)", &vars()), "x-web-0-1");
        assert_eq!(expand_vars("$(MISSING)", &vars()), "$(MISSING)");
        assert_eq!(expand_vars("$$(POD)", &vars()), "$(POD)");
        assert_eq!(expand_vars("cost $5 and $(", &vars()), "cost $5 and $(");
    }

    fn mounts() -> Vec<Mount> {
        normalise_mounts(vec![
            Mount {
                container_path: "/etc/app".into(),
                local_path: "/run/p/volumes/config".into(),
            },
            Mount {
                container_path: "/etc/app/secrets/github/".into(),
                local_path: "/run/p/volumes/gh".into(),
            },
            Mount {
                container_path: "/var/spool".into(),
                local_path: "/run/p/volumes/spool".into(),
            },
        ])
    }

    #[test]
    fn longest_mount_wins_and_only_whole_components_match() {
        let m = mounts();
        assert_eq!(
            rewrite_paths("--config=/etc/app/receiver.yaml", &m),
            "--config=/run/p/volumes/config/receiver.yaml"
        );
        assert_eq!(
            rewrite_paths("secretFile: /etc/app/secrets/github/secret", &m),
            "secretFile: /run/p/volumes/gh/secret"
        );
        assert_eq!(
            rewrite_paths("/etc/apple /x/etc/app", &m),
            "/etc/apple /x/etc/app"
        );
        assert_eq!(
            rewrite_paths("dir: \"/var/spool\"", &m),
            "dir: \"/run/p/volumes/spool\""
        );
    }

    #[test]
    fn wildcard_binds_become_the_pod_ip() {
        assert_eq!(
            rewrite_wildcard_binds("listen: 0.0.0.0:8080 admin [::]:9090", "127.2.0.5"),
            "listen: 127.2.0.5:8080 admin 127.2.0.5:9090"
        );
        assert_eq!(
            rewrite_wildcard_binds("10.0.0.0:80 0.0.0.0:x", "127.2.0.5"),
            "10.0.0.0:80 0.0.0.0:x"
        );
    }
}
