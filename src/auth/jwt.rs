//! Client tokens: `Verifier` checks a JWT's signature with the configured
//! keys (HS256 secrets, RS256 and ES256 public keys, several at once for
//! rotation) and turns its claims into a `Grant`, what the connection may
//! do.
//!
//! Built once at start from `[auth]` and shared read-only by every shard;
//! `verify` runs on the connection's shard at auth and at a token refresh.
//! It never reads a clock: the caller passes the time (the shard's last
//! sweep), so the simulated-time harness can drive expiry. Signatures are
//! checked by `jsonwebtoken`; this module decides which key and algorithm
//! may be tried and what the claims mean.
//!
//! ```text
//! header.alg   none → refused (alg_refused); not configured → refused (alg_refused)
//! signature    tried against every key of that algorithm; none verifies → bad_signature
//! exp          required; now > exp + leeway → expired
//! nbf          optional; now + leeway < nbf → not_yet_valid
//! sub          the user id: a positive i64, as a number or as canonical decimal text
//! crit         present → refused (no extension is understood)
//! rooms        optional list of room patterns the connection may join (absent: any)
//! publish      optional list of room patterns it may publish to (absent: none)
//! keys         optional list of connection keys it may hold (absent: none; the
//!              connection gets a server-assigned key)
//! info         optional JSON, at most MAX_INFO_LEN bytes, shown in presence
//! ```
//!
//! Invariants: no token is accepted without a verified signature and an
//! `exp`; the header's algorithm picks the keys, never the other way round,
//! so a public key is never used as an HMAC secret.

use crate::proto::body::{MAX_KEY_LEN, MAX_ROOM_LEN};
use crate::proto::close::CloseReason;
use crate::proto::pattern::{self, Kind};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;
use std::path::Path;

/// Longest `info` claim, as JSON text.
pub const MAX_INFO_LEN: usize = 1024;
/// Most patterns in `rooms` or in `publish`, and most keys in `keys`.
pub const MAX_PATTERNS: usize = 64;

/// What a verified token lets its connection do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The user id (`sub`).
    pub mid: i64,
    /// Expiry, Unix seconds (`exp`).
    pub exp: u64,
    /// Rooms and patterns it may join; `None`: any.
    pub rooms: Option<Box<[Box<str>]>>,
    /// Rooms and patterns it may publish to.
    pub publish: Box<[Box<str>]>,
    /// Connection keys it may choose (exact strings).
    pub keys: Box<[Box<str>]>,
    /// Opaque JSON shown in presence.
    pub info: Option<Box<str>>,
}

impl Grant {
    /// Whether the connection may join `room` (a room or a pattern).
    pub fn may_join(&self, room: &str) -> bool {
        self.rooms.as_deref().is_none_or(|g| pattern::allowed(g, room))
    }

    /// Whether it may publish to `room`.
    pub fn may_publish(&self, room: &str) -> bool {
        pattern::allowed(&self.publish, room)
    }

    /// Whether it may hold the client-chosen connection key `key`: only a
    /// key the token lists, so that one user cannot name (and so take over,
    /// with its key pushes) another user's connection.
    pub fn may_hold_key(&self, key: &str) -> bool {
        self.keys.iter().any(|k| &**k == key)
    }
}

/// Why a token was refused; each is a close reason of its own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Auth is on and the auth body has no token.
    #[error("auth is on: the auth body needs a \"token\"")]
    Missing,
    /// Not three base64url parts with JSON inside, or claims of the wrong
    /// shape.
    #[error("{0}")]
    Malformed(String),
    /// `alg: none`, or an algorithm no configured key has.
    #[error("algorithm {0} is not accepted")]
    AlgRefused(String),
    /// No configured key of the algorithm verifies the signature.
    #[error("signature does not verify with any configured key")]
    BadSignature,
    /// `exp` passed.
    #[error("token expired at {0}")]
    Expired(u64),
    /// `nbf` not reached.
    #[error("token not valid before {0}")]
    NotYetValid(u64),
}

impl TokenError {
    /// The close reason a connection refused for this gets.
    pub fn reason(&self) -> CloseReason {
        match self {
            TokenError::Missing => CloseReason::TokenRequired,
            TokenError::Malformed(_) => CloseReason::TokenMalformed,
            TokenError::AlgRefused(_) => CloseReason::TokenAlgRefused,
            TokenError::BadSignature => CloseReason::TokenBadSignature,
            TokenError::Expired(_) => CloseReason::TokenExpired,
            TokenError::NotYetValid(_) => CloseReason::TokenNotYetValid,
        }
    }
}

/// The configured keys.
pub struct Verifier {
    keys: Vec<(Algorithm, DecodingKey)>,
    leeway: u64,
    /// The first HS256 secret, for the development token endpoint.
    signer: Option<EncodingKey>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algs: Vec<Algorithm> = self.keys.iter().map(|k| k.0).collect();
        write!(f, "Verifier({algs:?}, leeway {})", self.leeway)
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Sub {
    Text(String),
    Number(i64),
}

#[derive(Deserialize)]
struct Claims {
    sub: Sub,
    exp: u64,
    nbf: Option<u64>,
    rooms: Option<Vec<String>>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    keys: Vec<String>,
    info: Option<serde_json::Value>,
}

impl Verifier {
    /// A verifier for HS256 `secrets` and the PEM public keys in
    /// `public_keys` (RS256 or ES256, told apart by the key), allowing
    /// `leeway` seconds of clock skew. Errors name the file or key at fault.
    pub fn new(secrets: &[String], public_keys: &[impl AsRef<Path>], leeway: u64) -> Result<Verifier, String> {
        let mut keys = Vec::new();
        for s in secrets {
            if s.len() < 32 {
                return Err("an HS256 secret must be at least 32 bytes (RFC 7518 §3.2)".into());
            }
            keys.push((Algorithm::HS256, DecodingKey::from_secret(s.as_bytes())));
        }
        for path in public_keys {
            let path = path.as_ref();
            let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let key = DecodingKey::from_rsa_pem(&pem)
                .map(|k| (Algorithm::RS256, k))
                .or_else(|_| DecodingKey::from_ec_pem(&pem).map(|k| (Algorithm::ES256, k)))
                .map_err(|_| format!("{}: not an RSA or EC (P-256) public key in PEM", path.display()))?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err("JWT auth needs at least one [auth] jwt_secret or jwt_public_key".into());
        }
        let signer = secrets.first().map(|s| EncodingKey::from_secret(s.as_bytes()));
        Ok(Verifier { keys, leeway, signer })
    }

    /// Checks `token` at Unix time `now` and returns what it grants.
    pub fn verify(&self, token: &str, now: u64) -> Result<Grant, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        let alg = header_alg(token)?;
        let alg = match alg.as_str() {
            "HS256" => Algorithm::HS256,
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            _ => return Err(TokenError::AlgRefused(alg)),
        };
        let mut validation = Validation::new(alg);
        // Time is ours to check (the caller's clock); audience is not used.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let mut tried = false;
        let mut claims = None;
        for (_, key) in self.keys.iter().filter(|(a, _)| *a == alg) {
            tried = true;
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(d) => {
                    claims = Some(d.claims);
                    break;
                }
                Err(e) => match e.kind() {
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => continue,
                    _ => return Err(TokenError::Malformed(format!("token refused: {e}"))),
                },
            }
        }
        if !tried {
            return Err(TokenError::AlgRefused(format!("{alg:?}")));
        }
        let c = claims.ok_or(TokenError::BadSignature)?;
        if now > c.exp.saturating_add(self.leeway) {
            return Err(TokenError::Expired(c.exp));
        }
        if let Some(nbf) = c.nbf {
            if now.saturating_add(self.leeway) < nbf {
                return Err(TokenError::NotYetValid(nbf));
            }
        }
        grant(c)
    }

    /// Signs an HS256 token with the first configured secret (`None`
    /// without one): the development token endpoint's.
    pub fn sign_dev(&self, claims: &serde_json::Value) -> Option<String> {
        let key = self.signer.as_ref()?;
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, key).ok()
    }
}

/// The `alg` of the token's header, read before anything is verified so
/// that `none` (and any other) is refused by name.
fn header_alg(token: &str) -> Result<String, TokenError> {
    let bad = |what: &str| TokenError::Malformed(format!("token refused: {what}"));
    let head = token.split('.').next().unwrap_or("");
    if token.split('.').count() != 3 {
        return Err(bad("not three dot-separated parts"));
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head)
        .map_err(|_| bad("header is not base64url"))?;
    #[derive(Deserialize)]
    struct H {
        alg: String,
        crit: Option<serde_json::Value>,
    }
    let h: H = serde_json::from_slice(&json).map_err(|_| bad("header is not JSON with an alg"))?;
    // RFC 7515 §4.1.11: a token whose header names extensions the recipient
    // must understand is invalid unless it understands them; volley
    // understands none.
    if h.crit.is_some() {
        return Err(bad("header lists critical extensions (crit); none is supported"));
    }
    Ok(h.alg)
}

fn grant(c: Claims) -> Result<Grant, TokenError> {
    let bad = |m: String| TokenError::Malformed(m);
    // One spelling per user: digits only, no sign, no leading zero, so
    // that "+5", "05" and "5" cannot be three names of user 5.
    let mid = match c.sub {
        Sub::Number(n) => n,
        Sub::Text(s) => {
            let canonical = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with('0');
            let n = canonical.then(|| s.parse::<i64>().ok()).flatten();
            n.ok_or_else(|| bad(format!("sub {s:?} is not a positive decimal user id")))?
        }
    };
    if mid <= 0 {
        return Err(bad(format!("sub {mid} is not a user (user ids are positive)")));
    }
    let patterns = |what: &str, v: Vec<String>| -> Result<Box<[Box<str>]>, TokenError> {
        if v.len() > MAX_PATTERNS {
            return Err(bad(format!("{what}: more than {MAX_PATTERNS} patterns")));
        }
        v.into_iter()
            .map(|p| {
                if p.is_empty() || p.len() > MAX_ROOM_LEN || pattern::kind(&p) == Kind::Invalid {
                    Err(bad(format!("{what}: {p:?} is not a room or pattern")))
                } else {
                    Ok(p.into_boxed_str())
                }
            })
            .collect()
    };
    if c.keys.len() > MAX_PATTERNS {
        return Err(bad(format!("keys: more than {MAX_PATTERNS}")));
    }
    if let Some(k) = c.keys.iter().find(|k| k.is_empty() || k.len() > MAX_KEY_LEN) {
        return Err(bad(format!(
            "keys: {k:?} is not a connection key (1 to {MAX_KEY_LEN} bytes)"
        )));
    }
    let info = match c.info {
        None => None,
        Some(v) => {
            let s = v.to_string();
            if s.len() > MAX_INFO_LEN {
                return Err(bad(format!("info is over {MAX_INFO_LEN} bytes")));
            }
            Some(s.into_boxed_str())
        }
    };
    Ok(Grant {
        mid,
        exp: c.exp,
        rooms: c.rooms.map(|r| patterns("rooms", r)).transpose()?,
        publish: patterns("publish", c.publish)?,
        keys: c.keys.into_iter().map(String::into_boxed_str).collect(),
        info,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const OTHER: &str = "fedcba9876543210fedcba9876543210";

    fn hs(secret: &str, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn v(secrets: &[&str]) -> Verifier {
        let s: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
        Verifier::new(&s, &[] as &[&str], 5).unwrap()
    }

    #[test]
    fn claims_become_a_grant() {
        let t = hs(
            SECRET,
            json!({"sub":"42","exp":1000,"rooms":["live://*"],"publish":["chat/>"],"info":{"name":"ann"}}),
        );
        let g = v(&[SECRET]).verify(&t, 900).unwrap();
        assert_eq!(g.mid, 42);
        assert_eq!(g.info.as_deref(), Some(r#"{"name":"ann"}"#));
        assert!(g.may_join("live://1") && g.may_join("live://*") && !g.may_join("chat/x"));
        assert!(g.may_publish("chat/x/y") && !g.may_publish("live://1"));
        let open = v(&[SECRET])
            .verify(&hs(SECRET, json!({"sub":7,"exp":1000})), 900)
            .unwrap();
        assert!(open.may_join("anything") && !open.may_publish("anything"));
    }

    #[test]
    fn every_refusal_by_name() {
        let ver = v(&[SECRET]);
        let ok = json!({"sub":"1","exp":1000});
        assert_eq!(ver.verify("", 0), Err(TokenError::Missing));
        assert!(matches!(ver.verify("a.b", 0), Err(TokenError::Malformed(_))));
        assert!(matches!(ver.verify("!!.b.c", 0), Err(TokenError::Malformed(_))));
        assert_eq!(ver.verify(&hs(OTHER, ok.clone()), 0), Err(TokenError::BadSignature));
        assert_eq!(
            ver.verify(&hs(SECRET, ok.clone()), 1006),
            Err(TokenError::Expired(1000))
        );
        assert!(ver.verify(&hs(SECRET, ok.clone()), 1005).is_ok(), "leeway");
        let nbf = json!({"sub":"1","exp":1000,"nbf":500});
        assert_eq!(
            ver.verify(&hs(SECRET, nbf.clone()), 494),
            Err(TokenError::NotYetValid(500))
        );
        assert!(ver.verify(&hs(SECRET, nbf), 495).is_ok());
        // alg none: header {"alg":"none"}, empty signature.
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(r#"{"sub":"1","exp":1000}"#)
        );
        assert_eq!(ver.verify(&none, 0), Err(TokenError::AlgRefused("none".into())));
        // An algorithm no key has.
        let hs384 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &ok,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(ver.verify(&hs384, 0), Err(TokenError::AlgRefused("HS384".into())));
        let es = format!("{}.{}.sig", b64(r#"{"alg":"ES256"}"#), b64(r#"{"sub":"1","exp":1000}"#));
        assert_eq!(ver.verify(&es, 0), Err(TokenError::AlgRefused("ES256".into())));
        for bad in [
            json!({"sub":"x","exp":1000}),
            json!({"sub":"0","exp":1000}),
            json!({"sub":"1"}),
            json!({"sub":"+5","exp":1000}),
            json!({"sub":"05","exp":1000}),
            json!({"sub":"-7","exp":1000}),
            json!({"sub":-7,"exp":1000}),
            json!({"sub":" 5","exp":1000}),
            json!({"sub":"9223372036854775808","exp":1000}),
        ] {
            assert!(
                matches!(ver.verify(&hs(SECRET, bad.clone()), 0), Err(TokenError::Malformed(_))),
                "{bad}"
            );
        }
        assert_eq!(
            ver.verify(&hs(SECRET, json!({"sub":"5","exp":1000})), 0).unwrap().mid,
            5
        );
        // A critical extension, understood or not, refuses the token.
        let signed = |header: &str| {
            let msg = format!("{}.{}", b64(header), b64(&ok.to_string()));
            let key = EncodingKey::from_secret(SECRET.as_bytes());
            let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &key, Algorithm::HS256).unwrap();
            format!("{msg}.{sig}")
        };
        assert!(ver.verify(&signed(r#"{"alg":"HS256"}"#), 0).is_ok());
        let t = signed(r#"{"alg":"HS256","crit":["exp"]}"#);
        assert!(matches!(ver.verify(&t, 0), Err(TokenError::Malformed(m)) if m.contains("crit")));
        let bad_room = json!({"sub":"1","exp":1000,"rooms":["a/>/b"]});
        assert!(matches!(
            ver.verify(&hs(SECRET, bad_room), 0),
            Err(TokenError::Malformed(_))
        ));
        let big = json!({"sub":"1","exp":1000,"info":"x".repeat(MAX_INFO_LEN)});
        assert!(matches!(ver.verify(&hs(SECRET, big), 0), Err(TokenError::Malformed(_))));
    }

    #[test]
    fn header_tricks_bring_no_key_of_their_own() {
        // Tokens that name a key in their header (an embedded `jwk`, a `jku`
        // URL, a `kid` path) or sign HS256 with a configured public key's
        // PEM as the secret: the signature is checked against the configured
        // keys only, so each is refused.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys");
        let ver = Verifier::new(
            &[SECRET.to_string()],
            &[dir.join("rs256-public.pem"), dir.join("es256-next-public.pem")],
            5,
        )
        .unwrap();
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let claims = json!({"sub":"1","exp":1000}).to_string();
        let signed = |header: &str, alg: Algorithm, key: &EncodingKey| {
            let msg = format!("{}.{}", b64(header), b64(&claims));
            let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), key, alg).unwrap();
            format!("{msg}.{sig}")
        };
        let attacker = EncodingKey::from_ec_pem(&std::fs::read(dir.join("es256-private.pem")).unwrap()).unwrap();
        // The attacker's public key (tests/keys/es256-public.pem) as a JWK.
        let jwk = json!({"alg":"ES256","jwk":{"kty":"EC","crv":"P-256",
            "x":"4tyeP3kFbU2Lfd22JFA8UHwQ_C_QTKFfKpBctM8Uvqs","y":"GsKSV55448IUbwwN0y9vWtLPpn665S-5I8mLEmNvOHo"}})
        .to_string();
        assert_eq!(
            ver.verify(&signed(&jwk, Algorithm::ES256, &attacker), 0),
            Err(TokenError::BadSignature)
        );
        let other = EncodingKey::from_secret(OTHER.as_bytes());
        for header in [
            r#"{"alg":"HS256","jku":"http://127.0.0.1:1/keys.json"}"#,
            r#"{"alg":"HS256","kid":"../../../../dev/null"}"#,
            r#"{"alg":"HS256","x5u":"http://127.0.0.1:1/cert.pem"}"#,
        ] {
            assert_eq!(
                ver.verify(&signed(header, Algorithm::HS256, &other), 0),
                Err(TokenError::BadSignature),
                "{header}"
            );
        }
        let empty = EncodingKey::from_secret(b"");
        let kid = r#"{"alg":"HS256","kid":"../../../../dev/null"}"#;
        assert_eq!(
            ver.verify(&signed(kid, Algorithm::HS256, &empty), 0),
            Err(TokenError::BadSignature)
        );
        let pem = std::fs::read(dir.join("rs256-public.pem")).unwrap();
        let confused = signed(r#"{"alg":"HS256"}"#, Algorithm::HS256, &EncodingKey::from_secret(&pem));
        assert_eq!(ver.verify(&confused, 0), Err(TokenError::BadSignature));
        assert!(ver
            .verify(
                &signed(
                    r#"{"alg":"HS256"}"#,
                    Algorithm::HS256,
                    &EncodingKey::from_secret(SECRET.as_bytes())
                ),
                0
            )
            .is_ok());
    }

    #[test]
    fn rotation_accepts_every_configured_secret() {
        let both = v(&[OTHER, SECRET]);
        let claims = json!({"sub":"1","exp":1000});
        assert!(both.verify(&hs(SECRET, claims.clone()), 0).is_ok());
        assert!(both.verify(&hs(OTHER, claims.clone()), 0).is_ok());
        assert!(Verifier::new(&["short".to_string()], &[] as &[&str], 0).is_err());
        assert!(Verifier::new(&[], &[] as &[&str], 0).is_err());
    }

    fn key(name: &str) -> String {
        format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn public_keys_verify_their_algorithm_only() {
        let ver = Verifier::new(&[], &[key("es256-public.pem"), key("rs256-public.pem")], 0).unwrap();
        let claims = json!({"sub":"9","exp":1000});
        let sign = |alg, pem: &str| {
            let pem = std::fs::read(key(pem)).unwrap();
            let k = match alg {
                Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
                _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
            };
            jsonwebtoken::encode(&Header::new(alg), &claims, &k).unwrap()
        };
        assert_eq!(
            ver.verify(&sign(Algorithm::ES256, "es256-private.pem"), 0).unwrap().mid,
            9
        );
        assert_eq!(
            ver.verify(&sign(Algorithm::RS256, "rs256-private.pem"), 0).unwrap().mid,
            9
        );
        assert_eq!(
            ver.verify(&sign(Algorithm::ES256, "es256-next-private.pem"), 0),
            Err(TokenError::BadSignature)
        );
        // No HS256 secret configured: an HMAC token is refused by algorithm,
        // the public key never serves as a secret.
        let hs = hs(SECRET, claims.clone());
        assert_eq!(ver.verify(&hs, 0), Err(TokenError::AlgRefused("HS256".into())));
        assert!(Verifier::new(&[], &[key("README.md")], 0).is_err());
    }
}
