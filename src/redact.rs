//! Keeping secrets out of errors, logs and status output.
//!
//! Text from outside (a command's stderr, a peer's error body) passes through a
//! [`Redactor`] before it is stored or shown: known secret values are replaced exactly,
//! and common credential shapes (URL passwords, `password=…`, bearer tokens) by pattern.

use std::sync::{Arc, LazyLock};

use regex::Regex;

const MASK: &str = "***";
/// Lines and values of secret files shorter than this are not taken for secrets: they are
/// YAML keys and ordinary words, and masking them would garble messages.
const MIN_LINE_SECRET: usize = 12;

static PATTERNS: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    vec![
        // scheme://user:password@host
        (Regex::new(r"(?i)([a-z][a-z0-9+.-]*://[^:/@\s]*):[^@/\s]+@").expect("valid regex"), "$1:***@"),
        // password=…, secret: …, token=…, PGPASSWORD=… (also in quotes)
        (
            Regex::new(r#"(?i)\b([a-z_]*(?:password|passwd|pwd|secret|token|api_?key|access_?key)[a-z_]*)(\s*[=:]\s*)("[^"]*"|'[^']*'|\S+)"#)
                .expect("valid regex"),
            "$1$2***",
        ),
        (Regex::new(r"(?i)\b(bearer|basic)\s+[a-z0-9._~+/=-]+").expect("valid regex"), "$1 ***"),
    ]
});

#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Arc<Vec<String>>,
}

impl Redactor {
    /// `secrets` are exact values to hide (e.g. the contents of credential files).
    pub fn new(secrets: Vec<String>) -> Redactor {
        let mut secrets: Vec<String> = secrets
            .into_iter()
            .map(|s| s.trim().to_string())
            // Very short values would mask ordinary words and add nothing.
            .filter(|s| s.len() >= 4)
            .collect();
        // Longest first, so a secret containing another is masked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Redactor {
            secrets: Arc::new(secrets),
        }
    }

    /// A redactor for the contents of secret files: each file whole, and each line and
    /// each `key: value` / `key=value` value in it that is long enough to be a secret
    /// (a kubeconfig's token, an identity's key line). Unreadable files are skipped:
    /// whoever reads them later reports that.
    pub fn from_files(paths: &[std::path::PathBuf]) -> Redactor {
        let mut secrets = Vec::new();
        for p in paths {
            let Ok(text) = std::fs::read_to_string(p) else {
                continue;
            };
            for line in text.lines().map(str::trim) {
                if line.starts_with('#') {
                    continue; // comments: an age identity's public key, say
                }
                if line.len() >= MIN_LINE_SECRET {
                    secrets.push(line.to_string());
                }
                if let Some((_, value)) = line.split_once([':', '='])
                    && value.trim().trim_matches(['"', '\'']).len() >= MIN_LINE_SECRET
                {
                    secrets.push(value.trim().trim_matches(['"', '\'']).to_string());
                }
            }
            secrets.push(text);
        }
        Redactor::new(secrets)
    }

    /// The longest exact secret: text cut anywhere may hold a piece of one this long.
    pub fn longest_secret(&self) -> usize {
        self.secrets.first().map_or(0, String::len)
    }

    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in self.secrets.iter() {
            out = out.replace(s.as_str(), MASK);
        }
        for (re, with) in PATTERNS.iter() {
            out = re.replace_all(&out, *with).into_owned();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_are_masked_whole_and_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let id = dir.path().join("identity");
        std::fs::write(
            &id,
            "# public key: age1qqqqpublic\nAGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQ\n",
        )
        .unwrap();
        let kc = dir.path().join("kubeconfig");
        std::fs::write(
            &kc,
            "users:\n- user:\n    token: eyJhbGciOiJSUzI1NiJ9.payload\n",
        )
        .unwrap();
        let r = Redactor::from_files(&[id, kc, dir.path().join("missing")]);
        let out = r.redact(
            "bad key AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQ; auth eyJhbGciOiJSUzI1NiJ9.payload; users: fine",
        );
        assert!(!out.contains("AGE-SECRET-KEY"), "{out}");
        assert!(!out.contains("eyJhbGci"), "{out}");
        assert!(out.contains("users: fine"), "{out}");
        assert!(r.longest_secret() > 40);
    }

    #[test]
    fn masks_known_and_shaped_secrets() {
        let r = Redactor::new(vec!["s3cr3t-value\n".into(), "ab".into()]);
        let cases = [
            (
                "connect to postgres://app:pa55@db:5432/x failed",
                "postgres://app:***@db",
            ),
            ("PGPASSWORD=hunter2 pg_dump", "PGPASSWORD=***"),
            ("password: 'a b c'", "password: ***"),
            ("Authorization: Bearer abc.def", "Bearer ***"),
            ("leaked s3cr3t-value here", "leaked *** here"),
        ];
        for (input, expect) in cases {
            let out = r.redact(input);
            assert!(out.contains(expect), "{input:?} -> {out:?}");
        }
        assert!(!r.redact("a b c password: 'a b c'").contains("'a b c'"));
        // Too short to be a secret worth masking.
        assert_eq!(r.redact("ab cd"), "ab cd");
    }
}
