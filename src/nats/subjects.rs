//! The NATS subjects of this crate: where agents take claims for a
//! contract, and the two private subjects of each session, named after
//! the session's secret.

use std::io;

/// The prefix of every subject, unless the host and agents set another
/// (both must use the same).
pub const DEFAULT_PREFIX: &str = "isolated_workers";

/// The queue group agents take claims in: each claim reaches one agent.
pub(crate) const CLAIM_QUEUE: &str = "agents";

/// Where claims for contract `name` version `version` are sent:
/// `<prefix>.claim.<name>.<version>`.
pub(crate) fn claim(prefix: &str, name: &str, version: u32) -> String {
    format!("{prefix}.claim.{}.{version}", token(name))
}

/// The subject a session's host listens on: the worker's bytes, heartbeats
/// and end.
pub(crate) fn to_host(prefix: &str, secret: &str) -> String {
    format!("{prefix}.session.{secret}.host")
}

/// The subject a session's agent listens on: the host's bytes, heartbeats,
/// signals and hang-up.
pub(crate) fn to_worker(prefix: &str, secret: &str) -> String {
    format!("{prefix}.session.{secret}.worker")
}

/// A fresh session secret: 128 random bits, in hex (a subject token).
pub(crate) fn secret() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(hex::encode(bytes))
}

/// Whether `secret` has the shape [`secret`] makes, so that a claim cannot
/// make an agent listen on a wildcard or on another session's subjects.
pub(crate) fn is_secret(secret: &str) -> bool {
    secret.len() == 32 && secret.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `name` as one subject token: characters NATS gives a meaning to (`.`,
/// `*`, `>`, white space) become `_`.
fn token(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_subjects_are_one_token_per_part() {
        assert_eq!(claim("iw", "Calc", 3), "iw.claim.Calc.3");
        assert_eq!(claim("iw", "a.b *>c", 1), "iw.claim.a_b___c.1");
    }

    #[test]
    fn secrets_are_128_random_bits_in_hex() {
        let (a, b) = (secret().unwrap(), secret().unwrap());
        assert!(is_secret(&a) && is_secret(&b));
        assert_ne!(a, b);
        assert!(!is_secret("*"));
        assert!(!is_secret(&format!("{}.x", &a[..30])));
    }
}
