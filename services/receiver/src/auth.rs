//! Verifies that a webhook comes from its sender, over the raw body and in constant time.
//! A failure names what was wrong (missing header, stale timestamp, mismatch) but never
//! anything derived from the secret.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::HeaderMap;
use ring::hmac;
use subtle::ConstantTimeEq;

use crate::config::{AuthConfig, AuthKind, HmacAlgorithm, SignatureEncoding};

/// Standard Webhooks: timestamps further than this from now are refused (replay window).
pub const STANDARD_WEBHOOKS_TOLERANCE_SECS: u64 = 5 * 60;

/// Standard Webhooks: most entries a `webhook-signature` header may list. A sender lists one
/// per secret it signs with, two while it rotates one; the bound keeps an unauthenticated
/// request from making us compare a huge list (each entry is base64-decoded and compared).
pub const STANDARD_WEBHOOKS_MAX_SIGNATURES: usize = 16;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthFailure {
    #[error("the {0} header is missing")]
    MissingHeader(&'static str),
    #[error("the {0} header is malformed")]
    Malformed(&'static str),
    #[error("the webhook-timestamp is more than 5 minutes away from now")]
    Stale,
    #[error(
        "the webhook-signature header lists more than {STANDARD_WEBHOOKS_MAX_SIGNATURES} signatures"
    )]
    TooManySignatures,
    #[error("the signature does not match the body")]
    Mismatch,
}

impl AuthFailure {
    /// A low-cardinality label for metrics and audit events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingHeader(_) => "missing",
            Self::Malformed(_) | Self::TooManySignatures => "malformed",
            Self::Stale => "stale",
            Self::Mismatch => "mismatch",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot load the secret of route `{route}` from {path}: {reason}")]
pub struct SecretError {
    pub route: String,
    pub path: String,
    pub reason: String,
}

pub enum Verifier {
    GitHub(hmac::Key),
    /// Several keys while a secret is being rotated.
    StandardWebhooks(Vec<hmac::Key>),
    Hmac {
        key: hmac::Key,
        header: http::HeaderName,
        encoding: SignatureEncoding,
        prefix: String,
    },
    Bearer(Vec<u8>),
    None,
}

impl Verifier {
    /// Reads the route's secret file(s) once, at start.
    pub fn load(route: &str, auth: &AuthConfig) -> Result<Self, SecretError> {
        let read = |path: &Path| -> Result<String, SecretError> {
            std::fs::read_to_string(path)
                .map(|text| text.trim().to_owned())
                .map_err(|e| SecretError {
                    route: route.into(),
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })
                .and_then(|text| {
                    if text.is_empty() {
                        Err(SecretError {
                            route: route.into(),
                            path: path.display().to_string(),
                            reason: "the file is empty".into(),
                        })
                    } else {
                        Ok(text)
                    }
                })
        };
        let kind = auth.kind().map_err(|reason| SecretError {
            route: route.into(),
            path: String::new(),
            reason: reason.into(),
        })?;
        Ok(match kind {
            AuthKind::Github(file) => Verifier::GitHub(hmac::Key::new(
                hmac::HMAC_SHA256,
                read(&file.secret_file)?.as_bytes(),
            )),
            AuthKind::StandardWebhooks(file) => {
                let text = read(&file.secret_file)?;
                let keys = text
                    .split_whitespace()
                    .map(|secret| {
                        standard_webhooks_key(secret).map_err(|reason| SecretError {
                            route: route.into(),
                            path: file.secret_file.display().to_string(),
                            reason,
                        })
                    })
                    .collect::<Result<_, _>>()?;
                Verifier::StandardWebhooks(keys)
            }
            AuthKind::Hmac(config) => Verifier::Hmac {
                key: hmac::Key::new(
                    match config.algorithm {
                        HmacAlgorithm::Sha256 => hmac::HMAC_SHA256,
                        HmacAlgorithm::Sha512 => hmac::HMAC_SHA512,
                    },
                    read(&config.secret_file)?.as_bytes(),
                ),
                header: http::HeaderName::try_from(config.header.as_str()).map_err(|e| {
                    SecretError {
                        route: route.into(),
                        path: config.secret_file.display().to_string(),
                        reason: e.to_string(),
                    }
                })?,
                encoding: config.encoding,
                prefix: config.prefix.clone(),
            },
            AuthKind::Bearer(file) => Verifier::Bearer(read(&file.secret_file)?.into_bytes()),
            AuthKind::None => Verifier::None,
        })
    }

    /// `now` is Unix seconds; it matters for Standard Webhooks' timestamp window only.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<(), AuthFailure> {
        match self {
            Verifier::GitHub(key) => {
                let signature = header(headers, "x-hub-signature-256")?;
                let hex = signature
                    .strip_prefix("sha256=")
                    .ok_or(AuthFailure::Malformed("X-Hub-Signature-256"))?;
                let tag = decode_hex(hex).ok_or(AuthFailure::Malformed("X-Hub-Signature-256"))?;
                hmac::verify(key, body, &tag).map_err(|_| AuthFailure::Mismatch)
            }
            Verifier::StandardWebhooks(keys) => verify_standard_webhooks(keys, headers, body, now),
            Verifier::Hmac {
                key,
                header: name,
                encoding,
                prefix,
            } => {
                let value = headers
                    .get(name)
                    .ok_or(AuthFailure::MissingHeader("signature"))?
                    .to_str()
                    .map_err(|_| AuthFailure::Malformed("signature"))?;
                let encoded = value
                    .trim()
                    .strip_prefix(prefix.as_str())
                    .ok_or(AuthFailure::Malformed("signature"))?;
                let tag = match encoding {
                    SignatureEncoding::Hex => decode_hex(encoded),
                    SignatureEncoding::Base64 => BASE64.decode(encoded).ok(),
                }
                .ok_or(AuthFailure::Malformed("signature"))?;
                hmac::verify(key, body, &tag).map_err(|_| AuthFailure::Mismatch)
            }
            Verifier::Bearer(token) => {
                let value = header(headers, "authorization")?;
                let given = value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
                    .ok_or(AuthFailure::Malformed("Authorization"))?;
                if bool::from(given.trim().as_bytes().ct_eq(token)) {
                    Ok(())
                } else {
                    Err(AuthFailure::Mismatch)
                }
            }
            Verifier::None => Ok(()),
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, AuthFailure> {
    let display = match name {
        "x-hub-signature-256" => "X-Hub-Signature-256",
        "authorization" => "Authorization",
        other => other,
    };
    headers
        .get(name)
        .ok_or(AuthFailure::MissingHeader(display))?
        .to_str()
        .map_err(|_| AuthFailure::Malformed(display))
}

/// `whsec_<base64>` as the spec serialises it; a bare base64 secret is accepted too.
fn standard_webhooks_key(secret: &str) -> Result<hmac::Key, String> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    let bytes = BASE64
        .decode(encoded)
        .map_err(|_| "a Standard Webhooks secret is `whsec_` followed by base64".to_owned())?;
    Ok(hmac::Key::new(hmac::HMAC_SHA256, &bytes))
}

fn verify_standard_webhooks(
    keys: &[hmac::Key],
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<(), AuthFailure> {
    let id = header(headers, "webhook-id")?;
    let timestamp = header(headers, "webhook-timestamp")?;
    let signatures = header(headers, "webhook-signature")?;
    let seconds: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| AuthFailure::Malformed("webhook-timestamp"))?;
    // `abs_diff` cannot overflow: any i64 a sender writes is just far from now.
    if now.abs_diff(seconds) > STANDARD_WEBHOOKS_TOLERANCE_SECS {
        return Err(AuthFailure::Stale);
    }
    // The signed content is `id.timestamp.body`; a `.` inside the id would make it ambiguous.
    if id.contains('.') {
        return Err(AuthFailure::Malformed("webhook-id"));
    }
    if signatures.split_whitespace().count() > STANDARD_WEBHOOKS_MAX_SIGNATURES {
        return Err(AuthFailure::TooManySignatures);
    }
    let tags: Vec<Vec<u8>> = signatures
        .split_whitespace()
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|encoded| BASE64.decode(encoded).ok())
        .collect();
    if tags.is_empty() {
        return Err(AuthFailure::Malformed("webhook-signature"));
    }
    let mut signed = Vec::with_capacity(id.len() + timestamp.len() + body.len() + 2);
    signed.extend_from_slice(id.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(timestamp.trim().as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    if any_tag_matches(keys, &signed, &tags, hmac::sign) {
        Ok(())
    } else {
        Err(AuthFailure::Mismatch)
    }
}

/// One HMAC per key, whatever the number of tags: the cost of a request is bounded by the
/// keys we hold and the body, not by what the sender lists. `sign` is `hmac::sign`; tests
/// pass a wrapper that counts.
fn any_tag_matches(
    keys: &[hmac::Key],
    signed: &[u8],
    tags: &[Vec<u8>],
    mut sign: impl FnMut(&hmac::Key, &[u8]) -> hmac::Tag,
) -> bool {
    // No early return: every key is signed with and every tag compared, in constant time.
    let mut matched = subtle::Choice::from(0);
    for key in keys {
        let expected = sign(key, signed);
        for tag in tags {
            matched |= expected.as_ref().ct_eq(tag);
        }
    }
    matched.into()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    http::HeaderName::from_static(name),
                    HeaderValue::from_str(value).unwrap(),
                )
            })
            .collect()
    }

    // GitHub's documented example ("Validating webhook deliveries", Testing the webhook payload
    // validation): secret, payload and the X-Hub-Signature-256 they give.
    const GITHUB_SECRET: &[u8] = b"It's a Secret to Everybody";
    const GITHUB_BODY: &[u8] = b"Hello, World!";
    const GITHUB_SIGNATURE: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn github_accepts_its_documented_example_and_refuses_the_rest() {
        let verifier = Verifier::GitHub(hmac::Key::new(hmac::HMAC_SHA256, GITHUB_SECRET));
        let good = headers(&[("x-hub-signature-256", GITHUB_SIGNATURE)]);
        assert_eq!(verifier.verify(&good, GITHUB_BODY, 0), Ok(()));
        assert_eq!(
            verifier.verify(&good, b"Hello, World?", 0),
            Err(AuthFailure::Mismatch)
        );
        assert_eq!(
            verifier.verify(&HeaderMap::new(), GITHUB_BODY, 0),
            Err(AuthFailure::MissingHeader("X-Hub-Signature-256"))
        );
        let sha1 = headers(&[("x-hub-signature-256", "sha1=757107ea")]);
        assert_eq!(
            verifier.verify(&sha1, GITHUB_BODY, 0),
            Err(AuthFailure::Malformed("X-Hub-Signature-256"))
        );
        let other_key = Verifier::GitHub(hmac::Key::new(hmac::HMAC_SHA256, b"another secret"));
        assert_eq!(
            other_key.verify(&good, GITHUB_BODY, 0),
            Err(AuthFailure::Mismatch)
        );
    }

    // The Standard Webhooks test vector (libraries/go/webhook_test.go of the spec repository).
    const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SW_TIMESTAMP: i64 = 1614265330;
    const SW_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SW_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn sw_headers(signature: &str, timestamp: i64) -> HeaderMap {
        headers(&[
            ("webhook-id", SW_ID),
            ("webhook-timestamp", &timestamp.to_string()),
            ("webhook-signature", signature),
        ])
    }

    #[test]
    fn standard_webhooks_accepts_the_spec_vector_within_five_minutes() {
        let verifier = Verifier::StandardWebhooks(vec![standard_webhooks_key(SW_SECRET).unwrap()]);
        let good = sw_headers(SW_SIGNATURE, SW_TIMESTAMP);
        assert_eq!(verifier.verify(&good, SW_BODY, SW_TIMESTAMP), Ok(()));
        assert_eq!(verifier.verify(&good, SW_BODY, SW_TIMESTAMP + 299), Ok(()));
        assert_eq!(verifier.verify(&good, SW_BODY, SW_TIMESTAMP - 299), Ok(()));
        assert_eq!(
            verifier.verify(&good, SW_BODY, SW_TIMESTAMP + 301),
            Err(AuthFailure::Stale)
        );
        assert_eq!(
            verifier.verify(&good, SW_BODY, SW_TIMESTAMP - 301),
            Err(AuthFailure::Stale)
        );
        assert_eq!(
            verifier.verify(&good, br#"{"test": 2432232315}"#, SW_TIMESTAMP),
            Err(AuthFailure::Mismatch)
        );
        // The signature covers the timestamp: a replay with a fresh timestamp fails.
        let moved = sw_headers(SW_SIGNATURE, SW_TIMESTAMP + 10);
        assert_eq!(
            verifier.verify(&moved, SW_BODY, SW_TIMESTAMP + 10),
            Err(AuthFailure::Mismatch)
        );
        let missing = headers(&[("webhook-id", SW_ID)]);
        assert_eq!(
            verifier.verify(&missing, SW_BODY, SW_TIMESTAMP),
            Err(AuthFailure::MissingHeader("webhook-timestamp"))
        );
        let not_v1 = sw_headers(
            "v1a,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            SW_TIMESTAMP,
        );
        assert_eq!(
            verifier.verify(&not_v1, SW_BODY, SW_TIMESTAMP),
            Err(AuthFailure::Malformed("webhook-signature"))
        );
    }

    #[test]
    fn standard_webhooks_rotation_accepts_either_secret_and_any_listed_signature() {
        let old = standard_webhooks_key("whsec_dGhlIG9sZCBzZWNyZXQgb2YgdGhpcyByb3V0ZQ==").unwrap();
        let rotating =
            Verifier::StandardWebhooks(vec![old, standard_webhooks_key(SW_SECRET).unwrap()]);
        let listed = sw_headers(
            &format!("v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= {SW_SIGNATURE}"),
            SW_TIMESTAMP,
        );
        assert_eq!(rotating.verify(&listed, SW_BODY, SW_TIMESTAMP), Ok(()));
    }

    /// `count` entries in a `webhook-signature` header: made-up tags, then the spec vector's
    /// valid one last.
    fn many_signatures(count: usize) -> String {
        let mut entries = vec!["v1,AAAA"; count - 1];
        entries.push(SW_SIGNATURE);
        entries.join(" ")
    }

    #[test]
    fn standard_webhooks_refuses_more_than_sixteen_signatures_even_with_a_valid_one() {
        let verifier = Verifier::StandardWebhooks(vec![standard_webhooks_key(SW_SECRET).unwrap()]);
        let sixteen = sw_headers(&many_signatures(16), SW_TIMESTAMP);
        assert_eq!(verifier.verify(&sixteen, SW_BODY, SW_TIMESTAMP), Ok(()));
        let seventeen = sw_headers(&many_signatures(17), SW_TIMESTAMP);
        let refusal = verifier
            .verify(&seventeen, SW_BODY, SW_TIMESTAMP)
            .unwrap_err();
        assert_eq!(
            (refusal.to_string().as_str(), refusal.reason()),
            (
                "the webhook-signature header lists more than 16 signatures",
                "malformed"
            )
        );
    }

    #[test]
    fn standard_webhooks_signs_once_per_key_whatever_the_number_of_tags() {
        let keys = [
            standard_webhooks_key("whsec_dGhlIG9sZCBzZWNyZXQgb2YgdGhpcyByb3V0ZQ==").unwrap(),
            standard_webhooks_key(SW_SECRET).unwrap(),
        ];
        let signed = [SW_ID.as_bytes(), b".1614265330.", SW_BODY].concat();
        let valid = BASE64
            .decode(SW_SIGNATURE.strip_prefix("v1,").unwrap())
            .unwrap();
        let mut tags = vec![vec![0u8; 32]; STANDARD_WEBHOOKS_MAX_SIGNATURES - 1];
        let mut signatures = 0;
        let mut counting = |key: &hmac::Key, data: &[u8]| {
            signatures += 1;
            hmac::sign(key, data)
        };
        assert!(!any_tag_matches(&keys, &signed, &tags, &mut counting));
        tags.push(valid);
        assert!(any_tag_matches(&keys, &signed, &tags, &mut counting));
        assert_eq!(signatures, 2 * keys.len());
    }

    #[test]
    fn standard_webhooks_refuses_timestamps_at_the_ends_of_i64_as_stale() {
        let verifier = Verifier::StandardWebhooks(vec![standard_webhooks_key(SW_SECRET).unwrap()]);
        // The last one is exactly i64::MAX + 1 seconds before now, whose absolute value
        // does not fit an i64 either.
        for timestamp in [i64::MIN, i64::MAX, i64::MIN + SW_TIMESTAMP] {
            let hostile = sw_headers(SW_SIGNATURE, timestamp);
            assert_eq!(
                verifier.verify(&hostile, SW_BODY, SW_TIMESTAMP),
                Err(AuthFailure::Stale),
                "{timestamp}"
            );
        }
    }

    #[test]
    fn generic_hmac_reads_its_header_encoding_and_prefix() {
        // Same HMAC-SHA256 as GitHub's example, presented base64 with a custom prefix.
        let tag = decode_hex(GITHUB_SIGNATURE.strip_prefix("sha256=").unwrap()).unwrap();
        let verifier = Verifier::Hmac {
            key: hmac::Key::new(hmac::HMAC_SHA256, GITHUB_SECRET),
            header: http::HeaderName::from_static("x-signature"),
            encoding: SignatureEncoding::Base64,
            prefix: "hmac ".into(),
        };
        let good = headers(&[("x-signature", &format!("hmac {}", BASE64.encode(&tag)))]);
        assert_eq!(verifier.verify(&good, GITHUB_BODY, 0), Ok(()));
        let unprefixed = headers(&[("x-signature", &BASE64.encode(&tag))]);
        assert_eq!(
            verifier.verify(&unprefixed, GITHUB_BODY, 0),
            Err(AuthFailure::Malformed("signature"))
        );
        assert_eq!(
            verifier.verify(&good, b"other", 0),
            Err(AuthFailure::Mismatch)
        );
        // RFC 4231 test case 2 for HMAC-SHA512, hex encoded.
        let sha512 = Verifier::Hmac {
            key: hmac::Key::new(hmac::HMAC_SHA512, b"Jefe"),
            header: http::HeaderName::from_static("x-signature"),
            encoding: SignatureEncoding::Hex,
            prefix: String::new(),
        };
        let rfc = headers(&[(
            "x-signature",
            "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
        )]);
        assert_eq!(
            sha512.verify(&rfc, b"what do ya want for nothing?", 0),
            Ok(())
        );
    }

    #[test]
    fn bearer_compares_the_whole_token() {
        let verifier = Verifier::Bearer(b"s3cret-token".to_vec());
        let good = headers(&[("authorization", "Bearer s3cret-token")]);
        assert_eq!(verifier.verify(&good, b"", 0), Ok(()));
        for wrong in [
            "Bearer s3cret",
            "Bearer s3cret-token-plus",
            "Basic s3cret-token",
        ] {
            let h = headers(&[("authorization", wrong)]);
            assert!(verifier.verify(&h, b"", 0).is_err(), "{wrong}");
        }
    }

    #[test]
    fn failures_never_carry_the_secret() {
        let verifier = Verifier::Bearer(b"s3cret-token".to_vec());
        let h = headers(&[("authorization", "Bearer nope")]);
        let message = verifier.verify(&h, b"", 0).unwrap_err().to_string();
        assert!(!message.contains("s3cret"), "{message}");
    }
}
