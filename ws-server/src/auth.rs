//! Optional JWT authentication and `Origin` checks for the streaming routes.
//!
//! Auth is off unless `WS_JWT_SECRET` (HS256) or `WS_JWT_PUBLIC_KEY` (a PEM file: RS256 for an
//! RSA key, ES256 for an EC P-256 key) is set; both are read and checked once at start
//! ([`JwtKey`]). A client sends its token as `Authorization: Bearer …` or, where it cannot set
//! headers (a browser's `WebSocket` and `EventSource`), as `?access_token=…` ([`Auth::token`]).
//!
//! A token is accepted only when:
//! - it is signed with the one algorithm the key is for: HS256 for a secret, RS256 for an RSA
//!   key, ES256 for an EC key. Any other `alg`, `none` included, is refused before the signature
//!   is looked at, so an HS256 token "signed" with the public RSA key is not accepted (key
//!   confusion);
//! - `exp` is present and not past, and `nbf`, when present, is not ahead, each give or take
//!   `WS_JWT_LEEWAY` (default 5 s) of clock skew;
//! - `aud` includes `WS_JWT_AUDIENCE` and `iss` equals `WS_JWT_ISSUER`, when these are set;
//! - the claims this server reads have the right types ([`Claims`]): `filter` (PostgREST filters,
//!   an array of strings or one string) and `select` (columns, an array or a comma string).
//!
//! Every refusal is an [`AuthError`] whose message says in one line what is wrong and how to fix
//! it; as an HTTP response it is a 401 with an RFC 6750 `WWW-Authenticate` header.
//!
//! Origins: `WS_ALLOWED_ORIGINS` (a comma list, or `*`) is unset by default, and then any page
//! may connect, with or without auth. Cross-site WebSocket hijacking needs credentials the
//! browser attaches by itself (cookies); the tokens here are sent explicitly by the page, which
//! a foreign page does not have, and non-browser clients can send any `Origin` they like, so
//! the check adds no protection by default. Set it to keep other sites from using the server
//! from their visitors' browsers, and always when a proxy in front authenticates by cookie.
//! A request without `Origin` (not from a browser) is never refused.
//!
//! Tokens are secrets: this module never logs them, and [`redact_query`] removes them from a
//! query string before it is logged.
//!
//! An HS256 token for tests, valid for an hour, with nothing but Python's standard library
//! (the claims argument is optional; the test `python_one_liner_mints_tokens_we_accept` runs
//! this very command):
//!
//! ```sh
//! python3 -c 'import sys,json,time,hmac,hashlib,base64;e=lambda b:base64.urlsafe_b64encode(b).rstrip(b"=").decode();j=lambda d:e(json.dumps(d).encode());m=j({"alg":"HS256","typ":"JWT"})+"."+j({"exp":int(time.time())+3600,**json.loads((sys.argv[2:]+["{}"])[0])});print(m+"."+e(hmac.new(sys.argv[1].encode(),m.encode(),hashlib.sha256).digest()))' "$WS_JWT_SECRET" '{"sub":"bob","filter":["customer_name=eq.Bob"]}'
//! ```

use std::{fmt, path::Path, time::Duration};

use axum::{
    http::{
        HeaderMap, HeaderValue, StatusCode,
        header::{AUTHORIZATION, ORIGIN, WWW_AUTHENTICATE},
    },
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde_json::{Map, Value};

use crate::config::Config;

/// The `realm` of the `WWW-Authenticate` challenge.
const REALM: &str = "orders";

/// The query parameter a token may come in.
pub(crate) const TOKEN_PARAM: &str = "access_token";

/// RFC 7518 §3.2: an HS256 key must be at least as long as the hash (256 bits). A shorter
/// secret can be found offline from any one token.
const MIN_SECRET_BYTES: usize = 32;

/// RSA moduli below this are refused at start (NIST SP 800-131A).
const MIN_RSA_BITS: usize = 2048;

/// A verification key and the one algorithm accepted with it, read and checked at start.
#[derive(Clone)]
pub(crate) struct JwtKey {
    key: DecodingKey,
    alg: Algorithm,
    /// Where the key came from, for the configuration log line (never the key).
    source: String,
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", alg_name(self.alg), self.source)
    }
}

impl JwtKey {
    /// An HS256 shared secret: the bytes of the string as given (not base64-decoded), as
    /// Auth0, Supabase and most issuers use it.
    ///
    /// # Errors
    /// A secret shorter than 32 bytes, or no crypto provider compiled in.
    pub(crate) fn from_secret(secret: &str) -> Result<Self, String> {
        check_provider()?;
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "expected a secret of at least {MIN_SECRET_BYTES} bytes for HS256 (got {}); generate one with: openssl rand -base64 32",
                secret.len()
            ));
        }
        let key = DecodingKey::from_secret(secret.as_bytes()).map_err(|e| format!("unusable secret: {e}"))?;
        Ok(Self { key, alg: Algorithm::HS256, source: "WS_JWT_SECRET".to_owned() })
    }

    /// A public key from a PEM file: `BEGIN PUBLIC KEY` (SPKI, RSA or EC P-256) or
    /// `BEGIN RSA PUBLIC KEY` (PKCS#1), as Auth0, Keycloak and Supabase publish them.
    ///
    /// # Errors
    /// The file cannot be read or holds no usable public key; the message says which and how
    /// to get one.
    pub(crate) fn from_pem_file(path: &Path) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read the public key file: {e}"))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| "not a PEM text file (expected -----BEGIN PUBLIC KEY-----)".to_owned())?;
        Self::from_pem(&text, &format!("WS_JWT_PUBLIC_KEY={}", path.display()))
    }

    /// A public key from PEM text; `source` names it in the configuration log line.
    ///
    /// # Errors
    /// See [`Self::from_pem_file`].
    pub(crate) fn from_pem(pem: &str, source: &str) -> Result<Self, String> {
        use p256::pkcs8::DecodePublicKey as _;
        use rsa::{pkcs1::DecodeRsaPublicKey as _, traits::PublicKeyParts as _};

        check_provider()?;
        let label = pem
            .lines()
            .find_map(|l| l.trim().strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
            .ok_or("not a PEM file (expected a line -----BEGIN PUBLIC KEY-----)")?;
        let rsa = match label {
            "PUBLIC KEY" => rsa::PublicKey::from_public_key_pem(pem).ok(),
            "RSA PUBLIC KEY" => Some(
                rsa::PublicKey::from_pkcs1_pem(pem)
                    .map_err(|e| format!("unreadable RSA PUBLIC KEY ({e}); export it again from the issuer"))?,
            ),
            l if l.contains("PRIVATE KEY") => {
                return Err(format!(
                    "holds a private key ({l}); give the server the public key only: openssl pkey -in PRIVATE.pem -pubout -out public.pem"
                ));
            }
            "CERTIFICATE" => {
                return Err(
                    "holds a certificate; extract its public key: openssl x509 -in cert.pem -pubkey -noout > public.pem"
                        .to_owned(),
                );
            }
            l => return Err(format!("holds a {l:?}, not a public key (expected -----BEGIN PUBLIC KEY-----)")),
        };
        if let Some(rsa) = rsa {
            let bits = rsa.size() * 8;
            if bits < MIN_RSA_BITS {
                return Err(format!("RSA key of {bits} bits is too weak; use a key of {MIN_RSA_BITS} bits or more"));
            }
            let der = rsa::pkcs1::EncodeRsaPublicKey::to_pkcs1_der(&rsa)
                .map_err(|e| format!("cannot re-encode the RSA key: {e}"))?;
            // The backend reads RSA keys as PKCS#1 DER.
            let key = DecodingKey::from_rsa_der(der.as_bytes());
            return Ok(Self { key, alg: Algorithm::RS256, source: format!("{source}, RSA {bits} bits") });
        }
        match p256::PublicKey::from_public_key_pem(pem) {
            Ok(ec) => {
                // The backend reads EC keys as an uncompressed SEC1 point.
                let key = DecodingKey::from_ec_der(&ec.to_sec1_bytes());
                Ok(Self { key, alg: Algorithm::ES256, source: format!("{source}, EC P-256") })
            }
            Err(_) => Err("not an RSA or EC P-256 public key (EC keys on other curves, such as P-384, and Ed25519 \
                 are not supported; the key must be for RS256 or ES256)"
                .to_owned()),
        }
    }
}

/// Fails when jsonwebtoken has no crypto backend (two were enabled by feature unification),
/// at start instead of at the first token.
fn check_provider() -> Result<(), String> {
    match jsonwebtoken::crypto::CryptoProvider::try_get_default() {
        Some(_) => Ok(()),
        None => {
            Err("jsonwebtoken has no crypto provider (is its aws_lc_rs feature enabled besides rust_crypto?)"
                .to_owned())
        }
    }
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        // JwtKey makes no other.
        _ => "an unsupported algorithm",
    }
}

/// The web pages allowed to connect (`WS_ALLOWED_ORIGINS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origins {
    /// `*` or unset: any page, and clients that send no `Origin`.
    Any,
    /// Only these (and clients that send no `Origin`).
    List(Vec<OriginPattern>),
}

impl Origins {
    /// Parses `*`, or a comma list of `scheme://host[:port]`, `scheme://*.domain[:port]` (any
    /// subdomain, not the domain itself) or `null` (sandboxed frames, `file:` pages).
    ///
    /// # Errors
    /// An entry that is not an origin, with an example of one.
    pub(crate) fn parse(value: &str) -> Result<Self, String> {
        let entries: Vec<&str> = value.split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
        if entries.is_empty() || entries == ["*"] {
            return Ok(Self::Any);
        }
        entries.iter().map(|e| OriginPattern::parse(e)).collect::<Result<_, _>>().map(Self::List)
    }

    fn allows(&self, origin: &str) -> bool {
        match self {
            Self::Any => true,
            Self::List(patterns) => patterns.iter().any(|p| p.matches(origin)),
        }
    }
}

/// One `WS_ALLOWED_ORIGINS` entry, lowercased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OriginPattern {
    /// `https://shop.example.com`, `http://localhost:8080`, `null`.
    Exact(String),
    /// `https://*.example.com`: `scheme` is `https://`, `suffix` is `.example.com` (with the
    /// port, if any).
    Subdomains { scheme: String, suffix: String },
}

impl OriginPattern {
    fn parse(entry: &str) -> Result<Self, String> {
        let entry = entry.to_ascii_lowercase();
        // Browsers send no trailing slash; a copied URL often has one.
        let entry = entry.strip_suffix('/').unwrap_or(&entry);
        if entry == "null" {
            return Ok(Self::Exact(entry.to_owned()));
        }
        let bad = |why: &str| {
            format!(
                "{entry:?} is not an origin ({why}); expected * or a comma list like https://shop.example.com,http://localhost:8080"
            )
        };
        if entry == "*" {
            return Err(bad("* stands alone: it cannot be combined with origins"));
        }
        let (scheme, host) = entry.split_once("://").ok_or_else(|| bad("no scheme://"))?;
        let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
        if !scheme_ok {
            return Err(bad("bad scheme"));
        }
        if host.is_empty() || host.contains(|c: char| "/?#@ \t".contains(c)) {
            return Err(bad("an origin is scheme://host[:port], with no path"));
        }
        // The port, if any, follows the last ':' after an IPv6 literal's ']'.
        let after_ipv6 = host.rfind(']').map_or(host, |i| &host[i + 1..]);
        if let Some((_, port)) = after_ipv6.rsplit_once(':')
            && (port.is_empty() || port.len() > 5 || !port.chars().all(|c| c.is_ascii_digit()))
        {
            return Err(bad("bad port"));
        }
        match host.strip_prefix("*.") {
            Some(domain) if !domain.is_empty() && !domain.contains('*') && !domain.starts_with([':', '.']) => {
                Ok(Self::Subdomains { scheme: format!("{scheme}://"), suffix: format!(".{domain}") })
            }
            Some(_) => Err(bad("expected *.domain")),
            None if host.contains('*') => Err(bad("* is allowed only as the first label: https://*.example.com")),
            None => Ok(Self::Exact(format!("{scheme}://{host}"))),
        }
    }

    fn matches(&self, origin: &str) -> bool {
        let origin = origin.trim().to_ascii_lowercase();
        match self {
            Self::Exact(exact) => origin == *exact,
            Self::Subdomains { scheme, suffix } => origin
                .strip_prefix(scheme.as_str())
                .and_then(|rest| rest.strip_suffix(suffix.as_str()))
                .is_some_and(|sub| {
                    !sub.is_empty()
                        && !sub.starts_with('.')
                        && !sub.ends_with('.')
                        && sub.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                }),
        }
    }
}

/// What a verified token lets a client see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claims {
    /// `sub`: who the token is for, for logs.
    pub(crate) sub: Option<String>,
    /// `exp`: when the token expires, in seconds since 1970 (UTC).
    pub(crate) exp: u64,
    /// `filter`: PostgREST filters (`customer_name=eq.Bob`), all of which a row must match;
    /// empty: every row.
    pub(crate) filter: Vec<String>,
    /// `select`: the columns the client may see; `None` (absent, or `*`): every column.
    pub(crate) select: Option<Vec<String>>,
}

/// The server's token check and allowed origins, built once from [`Config`].
#[derive(Debug, Clone)]
pub(crate) struct Auth {
    jwt: Option<Verifier>,
    origins: Origins,
}

/// An enabled token check.
#[derive(Debug, Clone)]
struct Verifier {
    key: JwtKey,
    /// Signature, algorithm and the configured `aud` / `iss`; times are checked here, with
    /// messages that give them.
    validation: Validation,
    leeway: u64,
}

impl Auth {
    /// The check `config` asks for.
    pub(crate) fn new(config: &Config) -> Self {
        let jwt = config.jwt_key.clone().map(|key| {
            let mut validation = Validation::new(key.alg);
            validation.required_spec_claims.clear();
            validation.validate_exp = false;
            validation.validate_nbf = false;
            validation.validate_aud = config.jwt_audience.is_some();
            if let Some(aud) = &config.jwt_audience {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".to_owned());
            }
            if let Some(iss) = &config.jwt_issuer {
                validation.set_issuer(&[iss]);
                validation.required_spec_claims.insert("iss".to_owned());
            }
            Verifier { key, validation, leeway: config.jwt_leeway.as_secs() }
        });
        Self { jwt, origins: config.allowed_origins.clone() }
    }

    /// No token check, any origin.
    #[cfg(test)]
    pub(crate) fn disabled() -> Self {
        Self { jwt: None, origins: Origins::Any }
    }

    /// Whether tokens are required.
    pub(crate) fn is_enabled(&self) -> bool {
        self.jwt.is_some()
    }

    /// The token from `Authorization: Bearer …` (preferred) or the `access_token` query value.
    /// Another `Authorization` scheme (`Basic`, from a proxy) is ignored.
    pub(crate) fn token<'a>(headers: &'a HeaderMap, query_token: Option<&'a str>) -> Option<&'a str> {
        let bearer = headers.get_all(AUTHORIZATION).iter().find_map(|value| {
            let (scheme, token) = value.to_str().ok()?.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
        });
        bearer.or_else(|| query_token.map(str::trim).filter(|t| !t.is_empty()))
    }

    /// With auth off: `Ok(None)`, whatever the token. With auth on: the token's claims, or why
    /// it is refused (also when there is none).
    ///
    /// # Errors
    /// [`AuthError`], ready to be the response.
    pub(crate) fn check(&self, token: Option<&str>) -> Result<Option<Claims>, AuthError> {
        if !self.is_enabled() {
            return Ok(None);
        }
        self.verify(token.ok_or(AuthError::Missing)?).map(Some)
    }

    /// Verifies a token given on an open connection (a refresh): as [`Self::check`], but the
    /// token is required.
    ///
    /// # Errors
    /// [`AuthError`]; [`AuthError::Disabled`] with auth off, where tokens mean nothing.
    pub(crate) fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        self.verify_at(token, now())
    }

    /// How long `claims` stay valid from now (leeway included): when a connection must have
    /// sent a new token. Zero for a token accepted within its leeway past `exp`.
    pub(crate) fn expires_in(&self, claims: &Claims) -> Duration {
        let leeway = self.jwt.as_ref().map_or(0, |v| v.leeway);
        Duration::from_secs(claims.exp.saturating_add(leeway).saturating_sub(now()))
    }

    /// Refuses a browser page whose `Origin` is not allowed; a request without `Origin` (not
    /// from a browser) passes.
    ///
    /// # Errors
    /// [`OriginError`], ready to be the response.
    pub(crate) fn check_origin(&self, headers: &HeaderMap) -> Result<(), OriginError> {
        for value in headers.get_all(ORIGIN) {
            let origin = String::from_utf8_lossy(value.as_bytes());
            if !self.origins.allows(&origin) {
                return Err(OriginError { origin: printable(&origin, 200) });
            }
        }
        Ok(())
    }

    fn verify_at(&self, token: &str, now: u64) -> Result<Claims, AuthError> {
        let Some(verifier) = &self.jwt else { return Err(AuthError::Disabled) };
        let parts: Vec<&str> = token.split('.').collect();
        match parts.len() {
            3 => {}
            5 => return Err(AuthError::Malformed("the token is encrypted (JWE), which is not supported".to_owned())),
            n => {
                return Err(AuthError::Malformed(format!(
                    "a JWT has three base64url parts separated by dots, this token has {n}"
                )));
            }
        }
        // The header is read before the signature is checked only to name a wrong algorithm;
        // jsonwebtoken checks it again.
        let alg = header_alg(parts[0])?;
        let expected = alg_name(verifier.key.alg);
        if alg != expected {
            return Err(AuthError::WrongAlgorithm { found: printable(&alg, 20), expected });
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &verifier.key.key, &verifier.validation)
            .map_err(|e| from_jwt_error(e.into_kind(), &verifier.validation, &parts))?;
        let claims = data.claims;

        let exp = match claims.get("exp") {
            None | Some(Value::Null) => return Err(AuthError::MissingExp),
            Some(v) => numeric_date("exp", v)?,
        };
        if now >= exp.saturating_add(verifier.leeway) {
            return Err(AuthError::Expired { exp, now });
        }
        if let Some(v) = claims.get("nbf").filter(|v| !v.is_null()) {
            let nbf = numeric_date("nbf", v)?;
            if nbf > now.saturating_add(verifier.leeway) {
                return Err(AuthError::NotYetValid { nbf, now });
            }
        }
        let sub = match claims.get("sub") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => return Err(AuthError::BadClaims(format!("sub must be a string, got {}", kind(other)))),
        };
        Ok(Claims {
            sub,
            exp,
            filter: filter_claim(claims.get("filter"))?,
            select: select_claim(claims.get("select"))?,
        })
    }
}

fn now() -> u64 {
    u64::try_from(jiff::Timestamp::now().as_second()).unwrap_or(0)
}

/// The header's `alg`, as the token states it.
fn header_alg(part: &str) -> Result<String, AuthError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::Malformed("the header (first part) is not base64url".to_owned()))?;
    let header: Value = serde_json::from_slice(&bytes)
        .map_err(|_| AuthError::Malformed("the header (first part) is not JSON".to_owned()))?;
    match header.get("alg") {
        Some(Value::String(alg)) => Ok(alg.clone()),
        _ => Err(AuthError::Malformed("the header has no alg".to_owned())),
    }
}

fn from_jwt_error(kind: ErrorKind, validation: &Validation, parts: &[&str]) -> AuthError {
    let one = |set: &Option<std::collections::HashSet<String>>| {
        set.as_ref().and_then(|s| s.iter().next().cloned()).unwrap_or_default()
    };
    match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
            AuthError::Malformed("the payload or signature is not base64url".to_owned())
        }
        ErrorKind::Json(_) => explain_json_error(parts),
        ErrorKind::InvalidToken => {
            AuthError::Malformed("the header asks for an extension this server does not support (crit, b64)".to_owned())
        }
        ErrorKind::InvalidAudience => {
            AuthError::BadClaims(format!("aud does not include {:?}, this server's audience", one(&validation.aud)))
        }
        ErrorKind::InvalidIssuer => {
            AuthError::BadClaims(format!("iss is not {:?}, the issuer this server trusts", one(&validation.iss)))
        }
        // jsonwebtoken counts a claim of the wrong type as missing.
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => AuthError::BadClaims(format!(
            "aud is missing or not a string (or array of strings); this server requires {:?} in it",
            one(&validation.aud)
        )),
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => AuthError::BadClaims(format!(
            "iss is missing or not a string; this server requires {:?}",
            one(&validation.iss)
        )),
        ErrorKind::InvalidClaimFormat(claim) | ErrorKind::MissingRequiredClaim(claim) => {
            AuthError::BadClaims(format!("{claim} has the wrong type"))
        }
        // InvalidAlgorithm cannot happen (the header's alg was compared with the key's before);
        // the rest are key errors, and the key was checked at start: the signature does not fit.
        _ => AuthError::BadSignature,
    }
}

/// What jsonwebtoken's JSON error was about. Its header is parsed before the signature is
/// checked, its claims after: so a header that parses means the signature was good, and the
/// payload may be looked at (for an `exp` or `nbf` of the wrong type, which jsonwebtoken fails
/// on as JSON).
fn explain_json_error(parts: &[&str]) -> AuthError {
    let decode = |part: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).ok();
    let header_ok = decode(parts[0]).is_some_and(|h| serde_json::from_slice::<jsonwebtoken::Header>(&h).is_ok());
    if !header_ok {
        return AuthError::Malformed("the header (first part) is not a valid JWT header".to_owned());
    }
    let not_object = || AuthError::Malformed("the payload (second part) is not a JSON object".to_owned());
    let Some(Value::Object(claims)) = decode(parts[1]).and_then(|p| serde_json::from_slice(&p).ok()) else {
        return not_object();
    };
    for claim in ["exp", "nbf"] {
        if let Some(Err(e)) = claims.get(claim).filter(|v| !v.is_null()).map(|v| numeric_date(claim, v)) {
            return e;
        }
    }
    not_object()
}

/// A NumericDate (RFC 7519 §2): seconds since 1970, possibly fractional.
fn numeric_date(claim: &str, v: &Value) -> Result<u64, AuthError> {
    let bad = || AuthError::BadClaims(format!("{claim} must be a number of seconds since 1970, got {}", kind(v)));
    if let Some(n) = v.as_u64() {
        return Ok(n);
    }
    match v.as_f64() {
        // `as` saturates: a date past 2^64 s is as good as never.
        Some(f) if f.is_finite() && f >= 0.0 => Ok(f.floor() as u64),
        _ => Err(bad()),
    }
}

fn filter_claim(v: Option<&Value>) -> Result<Vec<String>, AuthError> {
    let bad = |why: String| {
        AuthError::BadClaims(format!(
            "filter must be an array of PostgREST filters (e.g. [\"customer_name=eq.Bob\"]) or one string: {why}"
        ))
    };
    match v {
        None => Ok(Vec::new()),
        Some(Value::String(s)) if s.trim().is_empty() => Err(bad("it is empty".to_owned())),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
                Value::String(_) => Err(bad(format!("item {} is empty", i + 1))),
                other => Err(bad(format!("item {} is {}", i + 1, kind(other)))),
            })
            .collect(),
        Some(other) => Err(bad(format!("got {}", kind(other)))),
    }
}

fn select_claim(v: Option<&Value>) -> Result<Option<Vec<String>>, AuthError> {
    let bad = |why: String| {
        AuthError::BadClaims(format!(
            "select must be an array of column names (e.g. [\"id\",\"status\"]) or a comma string (\"id,status\"): {why}"
        ))
    };
    let columns: Vec<String> = match v {
        None => return Ok(None),
        Some(Value::String(s)) => s.split(',').map(|c| c.trim().to_owned()).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.trim().to_owned()),
                other => Err(bad(format!("item {} is {}", i + 1, kind(other)))),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(bad(format!("got {}", kind(other)))),
    };
    if columns.is_empty() {
        return Err(bad("it names no column".to_owned()));
    }
    if let Some(i) = columns.iter().position(String::is_empty) {
        return Err(bad(format!("column {} is empty", i + 1)));
    }
    match columns.iter().any(|c| c == "*") {
        false => Ok(Some(columns)),
        true if columns.len() == 1 => Ok(None),
        true => Err(bad("* means every column and cannot be combined with names".to_owned())),
    }
}

/// A JSON value's type, with its article, for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `s` cut to `max` characters, anything but printable ASCII as `?`: safe in a header value
/// and on one line.
fn printable(s: &str, max: usize) -> String {
    s.chars().take(max).map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).collect()
}

/// `secs` since 1970 as an RFC 3339 time, or the number if it is out of range.
fn time(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .map_or_else(|| format!("{secs} s since 1970"), |t| t.to_string())
}

/// Why a token is refused; `Display` is one line: what is wrong, then how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}; {}", self.reason(), self.fix())]
pub(crate) enum AuthError {
    /// No token was sent.
    Missing,
    /// Not a JWT (parts, base64url, JSON).
    Malformed(String),
    /// The signature does not match the server's key.
    BadSignature,
    /// Signed with another algorithm than the key's (`none` included).
    WrongAlgorithm {
        /// The header's `alg` (printable, cut short).
        found: String,
        /// The one the server accepts.
        expected: &'static str,
    },
    /// `exp` is past (beyond the leeway).
    Expired {
        /// The token's `exp`.
        exp: u64,
        /// The server's time.
        now: u64,
    },
    /// `nbf` is ahead (beyond the leeway).
    NotYetValid {
        /// The token's `nbf`.
        nbf: u64,
        /// The server's time.
        now: u64,
    },
    /// No `exp`: tokens that never expire are refused.
    MissingExp,
    /// A claim with the wrong type or value (`filter`, `select`, `sub`, `exp`, `aud`, `iss`).
    BadClaims(String),
    /// A token was verified on a server with auth off (see [`Auth::verify`]).
    Disabled,
}

impl AuthError {
    /// What is wrong (the RFC 6750 `error_description`).
    pub(crate) fn reason(&self) -> String {
        match self {
            Self::Missing => "no token".to_owned(),
            Self::Malformed(why) => format!("malformed token: {why}"),
            Self::BadSignature => "token signature does not verify with this server's key".to_owned(),
            Self::WrongAlgorithm { found, expected } => {
                format!("token signed with alg {found:?}, this server accepts only {expected}")
            }
            Self::Expired { exp, now } => format!("token expired at {} (now {})", time(*exp), time(*now)),
            Self::NotYetValid { nbf, now } => format!("token not valid before {} (now {})", time(*nbf), time(*now)),
            Self::MissingExp => "token has no exp".to_owned(),
            Self::BadClaims(why) => format!("bad token claims: {why}"),
            Self::Disabled => "this server does not check tokens (auth is off)".to_owned(),
        }
    }

    /// How to fix it.
    fn fix(&self) -> &'static str {
        match self {
            Self::Missing => "send one as Authorization: Bearer <token> or ?access_token=<token>",
            Self::Malformed(_) => "send the JWT itself (header.payload.signature), as issued",
            Self::BadSignature | Self::WrongAlgorithm { .. } => {
                "get a token from the issuer whose key this server has (WS_JWT_SECRET or WS_JWT_PUBLIC_KEY)"
            }
            Self::Expired { .. } => "get a new token",
            Self::NotYetValid { .. } => "wait, or check the clocks of the issuer and this server",
            Self::MissingExp => "issue tokens with an expiry (exp, in seconds since 1970)",
            Self::BadClaims(_) => "fix the claims the issuer puts in the token",
            Self::Disabled => "send no token",
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        if self == Self::Disabled {
            return (StatusCode::BAD_REQUEST, format!("{self}\n")).into_response();
        }
        // RFC 6750 §3: no error code when the request had no token at all.
        let realm_only = HeaderValue::from_static(r#"Bearer realm="orders""#);
        let challenge = match self {
            Self::Missing => realm_only,
            _ => {
                // A quoted-string without quotes or backslashes (RFC 6750 §3: error_description
                // is printable ASCII but those two).
                let description = printable(&self.reason(), 300).replace(['"', '\\'], "'");
                let value =
                    format!(r#"Bearer realm="{REALM}", error="invalid_token", error_description="{description}""#);
                HeaderValue::try_from(value).unwrap_or(realm_only)
            }
        };
        (StatusCode::UNAUTHORIZED, [(WWW_AUTHENTICATE, challenge)], format!("{self}\n")).into_response()
    }
}

/// A browser page whose origin `WS_ALLOWED_ORIGINS` does not list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "origin {origin:?} is not allowed to connect; the server's WS_ALLOWED_ORIGINS lists the web pages that may (add this one there to allow it)"
)]
pub(crate) struct OriginError {
    /// The `Origin` header (printable, cut short).
    origin: String,
}

impl IntoResponse for OriginError {
    fn into_response(self) -> Response {
        (StatusCode::FORBIDDEN, format!("{self}\n")).into_response()
    }
}

/// `query` (without the `?`) with every `access_token` value replaced by `REDACTED`, for logs.
/// The other parameters are kept as they are.
pub(crate) fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| {
            let (key, _) = pair.split_once('=').unwrap_or((pair, ""));
            // axum decodes `access%5Ftoken` to access_token too.
            if pair.contains('=') && percent_decode(key) == TOKEN_PARAM.as_bytes() {
                format!("{key}=REDACTED")
            } else {
                pair.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// `%XX` and `+` decoded, as form decoding does; bad escapes kept as they are.
fn percent_decode(s: &str) -> Vec<u8> {
    let hex = |b: u8| char::from(b).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', h, l]) => hex(*h).zip(hex(*l)).and_then(|(h, l)| u8::try_from(h * 16 + l).ok()),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, b) => out.push(b),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    use super::*;

    const SECRET: &str = "test-only-secret-0123456789abcdef-0123456789";
    const RSA_PRIVATE: &str = include_str!("../tests/fixtures/jwt-test-only-rsa-private.pem");
    const RSA_PUBLIC: &str = include_str!("../tests/fixtures/jwt-test-only-rsa-public.pem");
    const RSA_PUBLIC_PKCS1: &str = include_str!("../tests/fixtures/jwt-test-only-rsa-public-pkcs1.pem");
    const RSA_OTHER_PUBLIC: &str = include_str!("../tests/fixtures/jwt-test-only-rsa-other-public.pem");
    const EC_PRIVATE: &str = include_str!("../tests/fixtures/jwt-test-only-ec-private.pem");
    const EC_PUBLIC: &str = include_str!("../tests/fixtures/jwt-test-only-ec-public.pem");

    fn fixture(name: &str) -> String {
        format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    fn config(vars: &[(&str, &str)]) -> Result<Config, String> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Config::from_lookup(|k| vars.get(k).cloned()).map_err(|e| e.to_string())
    }

    fn auth_with(vars: &[(&str, &str)]) -> Auth {
        Auth::new(&config(vars).expect("valid configuration"))
    }

    fn hs_auth() -> Auth {
        auth_with(&[("WS_JWT_SECRET", SECRET)])
    }

    fn rsa_auth() -> Auth {
        Auth::new(&Config { jwt_key: Some(JwtKey::from_pem(RSA_PUBLIC, "test").unwrap()), ..base() })
    }

    fn ec_auth() -> Auth {
        Auth::new(&Config { jwt_key: Some(JwtKey::from_pem(EC_PUBLIC, "test").unwrap()), ..base() })
    }

    fn base() -> Config {
        Config::with_redis("redis://127.0.0.1:1")
    }

    fn rsa_signer() -> EncodingKey {
        use rsa::{pkcs1::EncodeRsaPrivateKey as _, pkcs8::DecodePrivateKey as _};
        let key = rsa::PrivateKey::from_pkcs8_pem(RSA_PRIVATE).unwrap();
        EncodingKey::from_rsa_der(key.to_pkcs1_der().unwrap().as_bytes())
    }

    fn ec_signer() -> EncodingKey {
        let (_, der) = p256::pkcs8::SecretDocument::from_pem(EC_PRIVATE).unwrap();
        EncodingKey::from_ec_der(der.as_bytes())
    }

    fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
        encode(&Header::new(alg), claims, key).unwrap()
    }

    fn hs(claims: &Value) -> String {
        sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(), claims)
    }

    fn in_an_hour() -> u64 {
        now() + 3600
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn valid_tokens_of_each_algorithm() {
        let exp = in_an_hour();
        let claims = json!({"sub": "bob", "exp": exp, "filter": ["customer_name=eq.Bob"], "select": ["id", "status"]});
        let expected = Claims {
            sub: Some("bob".to_owned()),
            exp,
            filter: vec!["customer_name=eq.Bob".to_owned()],
            select: Some(vec!["id".to_owned(), "status".to_owned()]),
        };
        for (auth, token) in [
            (hs_auth(), hs(&claims)),
            (rsa_auth(), sign(Algorithm::RS256, &rsa_signer(), &claims)),
            (ec_auth(), sign(Algorithm::ES256, &ec_signer(), &claims)),
        ] {
            assert_eq!(auth.check(Some(&token)), Ok(Some(expected.clone())));
            assert_eq!(auth.verify(&token), Ok(expected.clone()));
        }
    }

    #[test]
    fn pkcs1_rsa_public_key_is_read() {
        let key = JwtKey::from_pem(RSA_PUBLIC_PKCS1, "test").unwrap();
        let auth = Auth::new(&Config { jwt_key: Some(key), ..base() });
        let token = sign(Algorithm::RS256, &rsa_signer(), &json!({"exp": in_an_hour()}));
        assert!(auth.verify(&token).is_ok());
    }

    #[test]
    fn auth_off_ignores_tokens() {
        let auth = Auth::disabled();
        assert!(!auth.is_enabled());
        assert_eq!(auth.check(None), Ok(None));
        assert_eq!(auth.check(Some("garbage")), Ok(None));
        assert_eq!(auth.verify("garbage"), Err(AuthError::Disabled));
        assert!(!Auth::new(&base()).is_enabled());
        assert!(hs_auth().is_enabled());
    }

    #[test]
    fn missing_token() {
        let err = hs_auth().check(None).unwrap_err();
        assert_eq!(err, AuthError::Missing);
        assert_eq!(err.to_string(), "no token; send one as Authorization: Bearer <token> or ?access_token=<token>");
    }

    #[test]
    fn malformed_tokens() {
        let auth = hs_auth();
        let good = hs(&json!({"exp": in_an_hour()}));
        let (header, rest) = good.split_once('.').unwrap();
        let (payload, signature) = rest.split_once('.').unwrap();
        for (token, needle) in [
            ("abc", "this token has 1"),
            ("a.b", "this token has 2"),
            ("a.b.c.d", "this token has 4"),
            ("a.b.c.d.e", "encrypted (JWE)"),
            ("!!!.e30.c2ln", "header (first part) is not base64url"),
            (&format!("{}.e30.c2ln", b64(b"not json")), "header (first part) is not JSON"),
            (&format!("{}.e30.c2ln", b64(br#"{"typ":"JWT"}"#)), "header has no alg"),
            (&format!("{header}.{payload}.!!!"), "signature is not base64url"),
        ] {
            let err = auth.verify(token).unwrap_err();
            assert!(matches!(err, AuthError::Malformed(_)), "{token}: {err:?}");
            assert!(err.to_string().contains(needle), "{token}: {err}");
        }
        // Well signed, but the payload is not base64url, or not a JSON object.
        let signed = |payload: &str| {
            let message = format!("{header}.{payload}");
            let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
            let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
            format!("{message}.{signature}")
        };
        let not_object = AuthError::Malformed("the payload (second part) is not a JSON object".to_owned());
        for payload in [b64(b"[1,2]"), b64(b"{\"exp\":"), b64(b"7")] {
            assert_eq!(auth.verify(&signed(&payload)), Err(not_object.clone()), "{payload}");
        }
        let err = auth.verify(&signed("!!!")).unwrap_err();
        assert_eq!(err, AuthError::Malformed("the payload or signature is not base64url".to_owned()));
        // A badly signed one is refused for its signature, whatever its payload.
        assert_eq!(auth.verify(&format!("{header}.!!!.{signature}")), Err(AuthError::BadSignature));
        // A header field of the wrong type.
        let header = b64(br#"{"alg":"HS256","kid":5}"#);
        let err = auth.verify(&format!("{header}.{payload}.{signature}")).unwrap_err();
        assert_eq!(err, AuthError::Malformed("the header (first part) is not a valid JWT header".to_owned()));
    }

    #[test]
    fn wrong_signature_and_wrong_key() {
        let claims = json!({"exp": in_an_hour()});
        // Another secret.
        let other = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(b"another-secret-of-enough-length-0123456789").unwrap(),
            &claims,
        );
        assert_eq!(hs_auth().verify(&other), Err(AuthError::BadSignature));
        // A valid token with its payload swapped for another one (the signature no longer fits).
        let good = hs(&claims);
        let parts: Vec<&str> = good.split('.').collect();
        let forged = format!("{}.{}.{}", parts[0], b64(br#"{"exp":99999999999,"sub":"admin"}"#), parts[2]);
        assert_eq!(hs_auth().verify(&forged), Err(AuthError::BadSignature));
        // Another RSA key.
        let other_key = JwtKey::from_pem(RSA_OTHER_PUBLIC, "test").unwrap();
        let auth = Auth::new(&Config { jwt_key: Some(other_key), ..base() });
        let token = sign(Algorithm::RS256, &rsa_signer(), &claims);
        assert_eq!(auth.verify(&token), Err(AuthError::BadSignature));
        // An ES256 signature with one character changed.
        let token = sign(Algorithm::ES256, &ec_signer(), &claims);
        let (message, signature) = token.rsplit_once('.').unwrap();
        let flipped =
            if signature.starts_with('A') { signature.replacen('A', "B", 1) } else { format!("A{}", &signature[1..]) };
        assert_eq!(ec_auth().verify(&format!("{message}.{flipped}")), Err(AuthError::BadSignature));
        let err = AuthError::BadSignature.to_string();
        assert!(err.contains("WS_JWT_SECRET or WS_JWT_PUBLIC_KEY"), "{err}");
    }

    #[test]
    fn alg_none_is_refused() {
        let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = b64(json!({"exp": in_an_hour()}).to_string().as_bytes());
        for auth in [hs_auth(), rsa_auth(), ec_auth()] {
            for token in [format!("{header}.{payload}."), format!("{header}.{payload}.c2ln")] {
                let err = auth.verify(&token).unwrap_err();
                assert!(matches!(&err, AuthError::WrongAlgorithm { found, .. } if found == "none"), "{err:?}");
            }
        }
        let err = hs_auth().verify(&format!("{header}.{payload}.")).unwrap_err().to_string();
        assert!(err.starts_with(r#"token signed with alg "none", this server accepts only HS256; "#), "{err}");
    }

    #[test]
    fn hs256_token_signed_with_the_public_key_is_refused_by_an_rs256_server() {
        // Key confusion: the attacker knows the public key and uses its PEM as an HMAC secret.
        let claims = json!({"exp": in_an_hour(), "sub": "admin"});
        for public in [RSA_PUBLIC, RSA_PUBLIC_PKCS1] {
            let token = sign(Algorithm::HS256, &EncodingKey::from_secret(public.as_bytes()).unwrap(), &claims);
            let expected = AuthError::WrongAlgorithm { found: "HS256".to_owned(), expected: "RS256" };
            assert_eq!(rsa_auth().verify(&token), Err(expected));
        }
        let token = sign(Algorithm::HS256, &EncodingKey::from_secret(EC_PUBLIC.as_bytes()).unwrap(), &claims);
        assert!(matches!(ec_auth().verify(&token), Err(AuthError::WrongAlgorithm { expected: "ES256", .. })));
        // And the other algorithms of a family are not taken either.
        let token = sign(Algorithm::RS512, &rsa_signer(), &claims);
        assert!(matches!(rsa_auth().verify(&token), Err(AuthError::WrongAlgorithm { expected: "RS256", .. })));
        let token = sign(Algorithm::PS256, &rsa_signer(), &claims);
        assert!(matches!(rsa_auth().verify(&token), Err(AuthError::WrongAlgorithm { .. })));
        let token = sign(Algorithm::RS256, &rsa_signer(), &claims);
        assert!(matches!(hs_auth().verify(&token), Err(AuthError::WrongAlgorithm { expected: "HS256", .. })));
    }

    #[test]
    fn expiry_with_leeway() {
        let auth = hs_auth();
        let now = 1_796_155_500; // 2026-12-01T20:05:00Z
        let expired = hs(&json!({"exp": now - 300}));
        let err = auth.verify_at(&expired, now).unwrap_err();
        assert_eq!(err, AuthError::Expired { exp: now - 300, now });
        assert_eq!(
            err.to_string(),
            "token expired at 2026-12-01T20:00:00Z (now 2026-12-01T20:05:00Z); get a new token"
        );
        // Within the default 5 s leeway: accepted, up to the last second.
        for exp in [now - 4, now, now + 1] {
            assert!(auth.verify_at(&hs(&json!({"exp": exp})), now).is_ok(), "exp {exp}");
        }
        assert!(auth.verify_at(&hs(&json!({"exp": now - 5})), now).is_err());
        // Fractional NumericDates are allowed.
        assert_eq!(auth.verify_at(&hs(&json!({"exp": 1_796_155_600.5})), now).unwrap().exp, 1_796_155_600);
        // WS_JWT_LEEWAY widens it.
        let lenient = auth_with(&[("WS_JWT_SECRET", SECRET), ("WS_JWT_LEEWAY", "10m")]);
        assert!(lenient.verify_at(&expired, now).is_ok());
        // And with the real clock.
        assert!(matches!(auth.verify(&hs(&json!({"exp": 1_000_000_000}))), Err(AuthError::Expired { .. })));
    }

    #[test]
    fn not_before() {
        let auth = hs_auth();
        let now = 1_796_155_500;
        let exp = now + 3600;
        let err = auth.verify_at(&hs(&json!({"exp": exp, "nbf": now + 60})), now).unwrap_err();
        assert_eq!(err, AuthError::NotYetValid { nbf: now + 60, now });
        assert!(
            err.to_string().starts_with("token not valid before 2026-12-01T20:06:00Z (now 2026-12-01T20:05:00Z); ")
        );
        assert!(auth.verify_at(&hs(&json!({"exp": exp, "nbf": now + 5})), now).is_ok());
        assert!(auth.verify_at(&hs(&json!({"exp": exp, "nbf": now - 60})), now).is_ok());
        let err = auth.verify_at(&hs(&json!({"exp": exp, "nbf": "soon"})), now).unwrap_err();
        assert!(matches!(&err, AuthError::BadClaims(m) if m.contains("nbf must be a number")), "{err:?}");
    }

    #[test]
    fn exp_is_required_and_numeric() {
        let auth = hs_auth();
        assert_eq!(auth.verify(&hs(&json!({"sub": "bob"}))), Err(AuthError::MissingExp));
        assert_eq!(auth.verify(&hs(&json!({"exp": null}))), Err(AuthError::MissingExp));
        for exp in [json!("1796155500"), json!(-5), json!(true), json!([1])] {
            let err = auth.verify(&hs(&json!({ "exp": exp }))).unwrap_err();
            assert!(matches!(&err, AuthError::BadClaims(m) if m.starts_with("exp must be a number")), "{err:?}");
        }
        assert!(AuthError::MissingExp.to_string().contains("issue tokens with an expiry"));
    }

    #[test]
    fn filter_and_select_claims() {
        let auth = hs_auth();
        let exp = in_an_hour();
        let claims = |extra: Value| {
            let mut c = json!({"exp": exp});
            c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            auth.verify(&hs(&c))
        };
        let got = claims(json!({})).unwrap();
        assert_eq!((got.sub, got.filter, got.select), (None, vec![], None));
        let got = claims(json!({"filter": ["customer_name=eq.Bob", "status=neq.cancelled"]})).unwrap();
        assert_eq!(got.filter, ["customer_name=eq.Bob", "status=neq.cancelled"]);
        assert_eq!(claims(json!({"filter": "customer_name=eq.Bob"})).unwrap().filter, ["customer_name=eq.Bob"]);
        assert_eq!(claims(json!({"filter": []})).unwrap().filter, Vec::<String>::new());
        assert_eq!(claims(json!({"select": "id, status"})).unwrap().select.unwrap(), ["id", "status"]);
        assert_eq!(claims(json!({"select": ["id"]})).unwrap().select.unwrap(), ["id"]);
        assert_eq!(claims(json!({"select": "*"})).unwrap().select, None);
        assert_eq!(claims(json!({"select": ["*"]})).unwrap().select, None);
        assert_eq!(claims(json!({"sub": null})).unwrap().sub, None);

        for (extra, needle) in [
            (
                json!({"filter": 5}),
                "filter must be an array of PostgREST filters (e.g. [\"customer_name=eq.Bob\"]) or one string: got a number",
            ),
            (json!({"filter": null}), "got null"),
            (json!({"filter": {"customer_name": "Bob"}}), "got an object"),
            (json!({"filter": ["status=eq.new", 7]}), "item 2 is a number"),
            (json!({"filter": ""}), "it is empty"),
            (json!({"filter": ["a=eq.1", " "]}), "item 2 is empty"),
            (json!({"select": 1}), "select must be an array of column names"),
            (json!({"select": ["id", null]}), "item 2 is null"),
            (json!({"select": []}), "it names no column"),
            (json!({"select": "id,,status"}), "column 2 is empty"),
            (json!({"select": "*,id"}), "cannot be combined"),
            (json!({"sub": 42}), "sub must be a string, got a number"),
        ] {
            let err = claims(extra.clone()).unwrap_err();
            assert!(matches!(&err, AuthError::BadClaims(m) if m.contains(needle)), "{extra}: {err:?}");
            let line = err.to_string();
            assert!(
                line.starts_with("bad token claims: ")
                    && line.ends_with("; fix the claims the issuer puts in the token")
            );
            assert!(!line.contains('\n'));
        }
    }

    #[test]
    fn audience_and_issuer_when_configured() {
        let strict = auth_with(&[
            ("WS_JWT_SECRET", SECRET),
            ("WS_JWT_AUDIENCE", "orders-api"),
            ("WS_JWT_ISSUER", "https://issuer.example/"),
        ]);
        let exp = in_an_hour();
        let ok = json!({"exp": exp, "aud": ["other", "orders-api"], "iss": "https://issuer.example/"});
        assert!(strict.verify(&hs(&ok)).is_ok());
        assert!(
            strict.verify(&hs(&json!({"exp": exp, "aud": "orders-api", "iss": "https://issuer.example/"}))).is_ok()
        );
        for (claims, needle) in [
            (
                json!({"exp": exp, "aud": "billing", "iss": "https://issuer.example/"}),
                "aud does not include \"orders-api\"",
            ),
            (json!({"exp": exp, "iss": "https://issuer.example/"}), "aud is missing"),
            (json!({"exp": exp, "aud": "orders-api", "iss": "https://evil.example/"}), "iss is not"),
            (json!({"exp": exp, "aud": "orders-api"}), "iss is missing"),
            (json!({"exp": exp, "aud": 5, "iss": "https://issuer.example/"}), "aud is missing or not a string"),
        ] {
            let err = strict.verify(&hs(&claims)).unwrap_err();
            assert!(matches!(&err, AuthError::BadClaims(m) if m.contains(needle)), "{claims}: {err:?}");
        }
        // Not configured: aud and iss are not looked at (Supabase puts aud "authenticated").
        assert!(hs_auth().verify(&hs(&json!({"exp": exp, "aud": "authenticated", "iss": "x"}))).is_ok());
    }

    #[test]
    fn bearer_header_wins_over_query() {
        let mut headers = HeaderMap::new();
        assert_eq!(Auth::token(&headers, None), None);
        assert_eq!(Auth::token(&headers, Some("q")), Some("q"));
        assert_eq!(Auth::token(&headers, Some(" ")), None);
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer h.h.h"));
        assert_eq!(Auth::token(&headers, Some("q")), Some("h.h.h"));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("bearer  h.h.h "));
        assert_eq!(Auth::token(&headers, None), Some("h.h.h"));
        // Another scheme (a proxy's Basic auth) is not a token: the query's is used.
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic dXNlcjpwdw=="));
        assert_eq!(Auth::token(&headers, Some("q")), Some("q"));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(Auth::token(&headers, Some("q")), Some("q"));
        assert_eq!(Auth::token(&headers, None), None);
    }

    fn origin_headers(origin: Option<&'static str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(origin) = origin {
            headers.insert(ORIGIN, HeaderValue::from_static(origin));
        }
        headers
    }

    #[test]
    fn origins() {
        let auth = auth_with(&[(
            "WS_ALLOWED_ORIGINS",
            "https://shop.example.com, http://localhost:8080/,https://*.preview.example.com",
        )]);
        for allowed in [
            None,
            Some("https://shop.example.com"),
            Some("HTTPS://Shop.Example.com"),
            Some("http://localhost:8080"),
            Some("https://pr-12.preview.example.com"),
            Some("https://a.b.preview.example.com"),
        ] {
            assert_eq!(auth.check_origin(&origin_headers(allowed)), Ok(()), "{allowed:?}");
        }
        for denied in [
            "https://evil.example",
            "http://shop.example.com",
            "https://shop.example.com:8443",
            "http://localhost:8081",
            "https://preview.example.com",
            "https://evilpreview.example.com",
            "https://x.preview.example.com.evil.example",
            "null",
        ] {
            let err = auth.check_origin(&origin_headers(Some(denied))).unwrap_err();
            assert_eq!(err.origin, denied);
        }
        // Every Origin header must be allowed.
        let mut two = origin_headers(Some("https://shop.example.com"));
        two.append(ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(auth.check_origin(&two).is_err());

        // Unset or `*`: any origin, with auth on or off.
        for any in [Auth::disabled(), hs_auth(), auth_with(&[("WS_ALLOWED_ORIGINS", "*")])] {
            assert_eq!(any.check_origin(&origin_headers(Some("https://evil.example"))), Ok(()));
            assert_eq!(any.check_origin(&origin_headers(Some("null"))), Ok(()));
        }
        let with_null = auth_with(&[("WS_ALLOWED_ORIGINS", "null")]);
        assert_eq!(with_null.check_origin(&origin_headers(Some("null"))), Ok(()));
    }

    #[test]
    fn bad_origin_lists_are_config_errors() {
        for (value, needle) in [
            ("shop.example.com", "no scheme://"),
            ("https://shop.example.com/app", "no path"),
            ("*,https://a.example", "* stands alone"),
            ("https://a.*.example", "only as the first label"),
            ("https://*.", "expected *.domain"),
            ("https://a.example:http", "bad port"),
            ("1http://a", "bad scheme"),
        ] {
            let err = config(&[("WS_ALLOWED_ORIGINS", value)]).unwrap_err();
            assert!(err.contains("WS_ALLOWED_ORIGINS") && err.contains(needle), "{value}: {err}");
        }
        assert!(config(&[("WS_ALLOWED_ORIGINS", "http://[::1]:8080,capacitor://localhost")]).is_ok());
    }

    #[tokio::test]
    async fn origin_error_response() {
        let auth = auth_with(&[("WS_ALLOWED_ORIGINS", "https://shop.example.com")]);
        let response = auth.check_origin(&origin_headers(Some("https://evil.example"))).unwrap_err().into_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let body = axum::body::to_bytes(response.into_body(), 4096).await.unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            body.starts_with("origin \"https://evil.example\" is not allowed") && body.contains("WS_ALLOWED_ORIGINS")
        );
        assert_eq!(body.matches('\n').count(), 1);
        assert!(body.ends_with('\n'));
    }

    async fn parts(err: AuthError) -> (StatusCode, Option<String>, String) {
        let response = err.into_response();
        let status = response.status();
        let challenge = response.headers().get(WWW_AUTHENTICATE).map(|v| v.to_str().unwrap().to_owned());
        let body = axum::body::to_bytes(response.into_body(), 4096).await.unwrap();
        (status, challenge, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn unauthorized_responses() {
        let (status, challenge, body) = parts(AuthError::Missing).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(challenge.as_deref(), Some(r#"Bearer realm="orders""#));
        assert_eq!(body, "no token; send one as Authorization: Bearer <token> or ?access_token=<token>\n");

        let expired = AuthError::Expired { exp: 1_796_155_200, now: 1_796_155_500 };
        let (status, challenge, body) = parts(expired).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            challenge.as_deref(),
            Some(
                r#"Bearer realm="orders", error="invalid_token", error_description="token expired at 2026-12-01T20:00:00Z (now 2026-12-01T20:05:00Z)""#
            )
        );
        assert_eq!(body, "token expired at 2026-12-01T20:00:00Z (now 2026-12-01T20:05:00Z); get a new token\n");

        // Quotes (and anything a client put in alg) cannot break out of the quoted string.
        let wrong = AuthError::WrongAlgorithm { found: printable("no\"ne\\\u{e9}", 20), expected: "HS256" };
        let (_, challenge, body) = parts(wrong).await;
        let challenge = challenge.unwrap();
        let description = challenge.split_once("error_description=\"").unwrap().1;
        assert!(!description.trim_end_matches('"').contains(['"', '\\']), "{challenge}");
        assert_eq!(body.lines().count(), 1);

        let (status, challenge, _) = parts(AuthError::Disabled).await;
        assert_eq!((status, challenge), (StatusCode::BAD_REQUEST, None));
    }

    #[test]
    fn every_error_is_one_line_with_a_fix() {
        for err in [
            AuthError::Missing,
            AuthError::Malformed("x".to_owned()),
            AuthError::BadSignature,
            AuthError::WrongAlgorithm { found: "none".to_owned(), expected: "HS256" },
            AuthError::Expired { exp: 0, now: 10 },
            AuthError::NotYetValid { nbf: u64::MAX, now: 10 },
            AuthError::MissingExp,
            AuthError::BadClaims("x".to_owned()),
            AuthError::Disabled,
        ] {
            let line = err.to_string();
            assert!(!line.contains('\n') && line.split("; ").count() >= 2, "{line}");
        }
        // Times beyond jiff's range print as numbers.
        assert!(AuthError::NotYetValid { nbf: u64::MAX, now: 10 }.to_string().contains("s since 1970"));
    }

    #[test]
    fn query_tokens_are_redacted() {
        assert_eq!(
            redact_query("since=e:1&access_token=a.b.c&protocol=orders.v1"),
            "since=e:1&access_token=REDACTED&protocol=orders.v1"
        );
        assert_eq!(redact_query("access_token=a.b.c"), "access_token=REDACTED");
        assert_eq!(
            redact_query("access%5Ftoken=a.b.c&access_token=d"),
            "access%5Ftoken=REDACTED&access_token=REDACTED"
        );
        assert_eq!(redact_query("access_token="), "access_token=REDACTED");
        assert_eq!(
            redact_query("my_access_token=x&access_tokens=y&access_token"),
            "my_access_token=x&access_tokens=y&access_token"
        );
        assert_eq!(redact_query(""), "");
        assert_eq!(redact_query("a=%zz&b=%4"), "a=%zz&b=%4");
    }

    #[test]
    fn key_config_errors() {
        let err = config(&[("WS_JWT_SECRET", SECRET), ("WS_JWT_PUBLIC_KEY", "/etc/key.pem")]).unwrap_err();
        assert!(err.contains("WS_JWT_PUBLIC_KEY=\"/etc/key.pem\": set one of WS_JWT_SECRET"), "{err}");
        assert!(!err.contains(SECRET), "{err}");

        let err = config(&[("WS_JWT_SECRET", "short")]).unwrap_err();
        assert!(err.contains("WS_JWT_SECRET=\"***\": expected a secret of at least 32 bytes"), "{err}");
        assert!(!err.contains("short\""), "{err}");

        let missing = "/nonexistent/ws-server-test/key.pem";
        let err = config(&[("WS_JWT_PUBLIC_KEY", missing)]).unwrap_err();
        assert!(err.contains(&format!("WS_JWT_PUBLIC_KEY=\"{missing}\": cannot read the public key file")), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("garbage", "hello, not a key\n".as_bytes(), "not a PEM file"),
            (
                "bad-base64",
                b"-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n",
                "not an RSA or EC P-256 public key",
            ),
            (
                "bad-pkcs1",
                b"-----BEGIN RSA PUBLIC KEY-----\nAAAA\n-----END RSA PUBLIC KEY-----\n",
                "unreadable RSA PUBLIC KEY",
            ),
            ("binary", &[0xff, 0xfe, 0x00, 0x30], "not a PEM text file"),
        ];
        for (name, contents, needle) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, contents).unwrap();
            let path = path.to_str().unwrap();
            let err = config(&[("WS_JWT_PUBLIC_KEY", path)]).unwrap_err();
            assert!(err.contains(&format!("WS_JWT_PUBLIC_KEY=\"{path}\"")) && err.contains(needle), "{name}: {err}");
        }
        for (name, needle) in [
            ("jwt-test-only-rsa-private.pem", "holds a private key (PRIVATE KEY); give the server the public key only"),
            ("jwt-test-only-ec-private.pem", "holds a private key"),
            ("jwt-test-only-ec-p384-public.pem", "not an RSA or EC P-256 public key"),
            ("jwt-test-only-ed25519-public.pem", "not an RSA or EC P-256 public key"),
            ("jwt-test-only-rsa-1024-public.pem", "RSA key of 1024 bits is too weak"),
        ] {
            let err = config(&[("WS_JWT_PUBLIC_KEY", &fixture(name))]).unwrap_err();
            assert!(err.contains(needle), "{name}: {err}");
            // The key material is never echoed.
            assert!(!err.contains("MII"), "{name}: {err}");
        }
        let err = config(&[("WS_JWT_AUDIENCE", "orders-api")]).unwrap_err();
        assert!(err.contains("WS_JWT_AUDIENCE=\"orders-api\": needs WS_JWT_SECRET or WS_JWT_PUBLIC_KEY"), "{err}");
        let err = config(&[("WS_JWT_SECRET", SECRET), ("WS_JWT_LEEWAY", "5")]).unwrap_err();
        assert!(err.contains("WS_JWT_LEEWAY"), "{err}");
    }

    #[test]
    fn keys_from_files_and_the_log_line() {
        let c = config(&[("WS_JWT_PUBLIC_KEY", &fixture("jwt-test-only-rsa-public.pem"))]).unwrap();
        let line = format!("{c:?}");
        assert!(line.contains("RS256 (WS_JWT_PUBLIC_KEY=") && line.contains("RSA 2048 bits)"), "{line}");
        let c = config(&[("WS_JWT_PUBLIC_KEY", &fixture("jwt-test-only-ec-public.pem"))]).unwrap();
        assert!(format!("{c:?}").contains("ES256 (WS_JWT_PUBLIC_KEY="), "{c:?}");
        let c = config(&[("WS_JWT_SECRET", SECRET), ("WS_ALLOWED_ORIGINS", "https://a.example")]).unwrap();
        let line = format!("{c:?}");
        assert!(line.contains("HS256 (WS_JWT_SECRET)") && !line.contains(SECRET), "{line}");
        assert!(line.contains("https://a.example") && line.contains("jwt_leeway: 5s"), "{line}");
        let c = base();
        assert_eq!(
            (c.jwt_key.is_none(), c.jwt_leeway, &c.allowed_origins),
            (true, Duration::from_secs(5), &Origins::Any)
        );
    }

    #[test]
    fn expires_in_counts_the_leeway() {
        let auth = hs_auth();
        let claims = auth.verify(&hs(&json!({"exp": in_an_hour()}))).unwrap();
        let left = auth.expires_in(&claims).as_secs();
        assert!((3600..=3605).contains(&left), "{left}");
        assert_eq!(auth.expires_in(&Claims { exp: 0, ..claims }), Duration::ZERO);
    }

    /// The one-liner in the module docs, for minting HS256 test tokens with only Python's
    /// standard library: `python3 -c '<this>' SECRET '{"claims":…}'`. Keep the two the same.
    const MINT_PY: &str = r#"import sys,json,time,hmac,hashlib,base64;e=lambda b:base64.urlsafe_b64encode(b).rstrip(b"=").decode();j=lambda d:e(json.dumps(d).encode());m=j({"alg":"HS256","typ":"JWT"})+"."+j({"exp":int(time.time())+3600,**json.loads((sys.argv[2:]+["{}"])[0])});print(m+"."+e(hmac.new(sys.argv[1].encode(),m.encode(),hashlib.sha256).digest()))"#;

    #[test]
    fn python_one_liner_mints_tokens_we_accept() {
        assert!(include_str!("auth.rs").contains(&format!("//! python3 -c '{MINT_PY}' ")), "docs and MINT_PY differ");
        let run = |args: &[&str]| std::process::Command::new("python3").arg("-c").arg(MINT_PY).args(args).output();
        let output = match run(&[SECRET, r#"{"sub":"bob","filter":["customer_name=eq.Bob"]}"#]) {
            Ok(output) => output,
            Err(e) => {
                eprintln!("skipped: python3 not runnable ({e})");
                return;
            }
        };
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let token = String::from_utf8(output.stdout).unwrap();
        let claims = hs_auth().verify(token.trim()).unwrap();
        assert_eq!(claims.sub.as_deref(), Some("bob"));
        assert_eq!(claims.filter, ["customer_name=eq.Bob"]);
        assert!(claims.exp > now() + 3500);
        // Without claims: just an expiry.
        let output = run(&[SECRET]).unwrap();
        let claims = hs_auth().verify(String::from_utf8(output.stdout).unwrap().trim()).unwrap();
        assert_eq!((claims.sub, claims.filter), (None, vec![]));
    }
}
