//! The strict access-token verifier.

use std::collections::HashMap;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::claims::{ACCESS_TOKEN_TYPE, AccessClaims};
use crate::jwks::Jwks;

/// Largest token accepted; anything longer is refused before it is parsed.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Clock skew tolerated on `exp` and `nbf`: a token is accepted until this long after
/// its `exp`, so whatever revokes a token must be kept at least that long past it.
pub const LEEWAY_SECONDS: u64 = 30;

/// The longest lifetime (`exp - iat`) a token may claim: the platform's largest
/// `ACCESS_TOKEN_TTL_SECONDS`. A token claiming more, or issued in the future, was
/// not made by auth: whoever holds a leaked key cannot mint tokens that outlive the
/// key's withdrawal by more than a day, whatever `exp` they write.
pub const MAX_LIFETIME_SECONDS: i64 = 86_400;

/// Why a token was refused. Every variant means 401 to the caller; the variant is for
/// logs and metrics, and [`TokenError::UnknownKey`] tells a cache to refresh its JWKS.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT, too long, or not decodable.
    #[error("malformed token")]
    Malformed,
    /// `alg` is not the deployment's algorithm (this includes `none`, and HS256 signed
    /// with an EdDSA public key).
    #[error("algorithm not allowed")]
    Algorithm,
    /// `typ` is not `at+jwt`: some other kind of token.
    #[error("not an access token")]
    NotAnAccessToken,
    /// The header carries `jku`, `x5u`, `x5c` or an embedded `jwk`; they are never
    /// followed, and a token that relies on them is refused outright.
    #[error("forbidden header parameter")]
    ForbiddenHeader,
    /// No `kid`, or a `kid` not in the key set.
    #[error("unknown signing key")]
    UnknownKey,
    /// `exp` is past.
    #[error("token expired")]
    Expired,
    /// Bad signature, wrong `iss`/`aud`, `nbf` in the future, a claim missing, or a
    /// `sub`, `sid` or `jti` that is not a UUID.
    #[error("invalid token")]
    Invalid,
}

/// Verifies access tokens against a key set, an issuer and an audience.
#[derive(Clone)]
pub struct Verifier {
    keys: HashMap<String, DecodingKey>,
    validation: Validation,
    /// The one algorithm this deployment uses; every other is refused.
    algorithm: Algorithm,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("kids", &self.keys.keys())
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for the Ed25519 keys of `jwks`. Keys of any other type are ignored.
    pub fn new(jwks: &Jwks, issuer: &str, audience: &str) -> Self {
        let keys = jwks
            .keys
            .iter()
            .filter(|k| k.kty == "OKP" && k.crv == "Ed25519")
            .filter_map(|k| Some((k.kid.clone(), DecodingKey::from_ed_components(&k.x).ok()?)))
            .collect();
        Self::with_keys(keys, Algorithm::EdDSA, issuer, audience)
    }

    /// A verifier for the symmetric HS256 mode (`JWT_ALGORITHM=HS256`): only HS256
    /// tokens under `secret`'s key id are accepted, EdDSA ones are refused.
    pub fn hs256(secret: &crate::HmacKey, issuer: &str, audience: &str) -> Self {
        let keys = HashMap::from([(secret.kid().to_owned(), secret.decoding_key())]);
        Self::with_keys(keys, Algorithm::HS256, issuer, audience)
    }

    fn with_keys(
        keys: HashMap<String, DecodingKey>,
        algorithm: Algorithm,
        issuer: &str,
        audience: &str,
    ) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        Self {
            keys,
            validation,
            algorithm,
        }
    }

    /// Whether `kid` is one of this verifier's keys.
    pub fn knows(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    /// The `kid` a token names, without verifying anything; for JWKS refresh decisions.
    pub fn kid_of(token: &str) -> Option<String> {
        if token.len() > MAX_TOKEN_BYTES {
            return None;
        }
        jsonwebtoken::decode_header(token).ok()?.kid
    }

    /// Verifies `token` and returns its claims.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed);
        }
        // decode_header refuses unknown `alg` values such as "none" or "NoNe".
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::InvalidAlgorithmName | ErrorKind::InvalidAlgorithm => TokenError::Algorithm,
            _ => TokenError::Malformed,
        })?;
        if header.alg != self.algorithm {
            return Err(TokenError::Algorithm);
        }
        if header
            .typ
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
            != Some(ACCESS_TOKEN_TYPE)
        {
            return Err(TokenError::NotAnAccessToken);
        }
        if header.jku.is_some()
            || header.x5u.is_some()
            || header.jwk.is_some()
            || header.x5c.is_some()
            || header.crit.is_some()
        {
            return Err(TokenError::ForbiddenHeader);
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.keys.get(kid))
            .ok_or(TokenError::UnknownKey)?;
        let claims = jsonwebtoken::decode::<AccessClaims>(token, key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::InvalidToken
                | ErrorKind::Base64(_)
                | ErrorKind::Json(_)
                | ErrorKind::Utf8(_) => TokenError::Malformed,
                _ => TokenError::Invalid,
            })?;
        let now = i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap_or(i64::MAX);
        let leeway = i64::try_from(LEEWAY_SECONDS).unwrap_or(0);
        let plausible = claims.iat <= now.saturating_add(leeway)
            && claims.exp.saturating_sub(claims.iat) <= MAX_LIFETIME_SECONDS;
        // The platform names users, sessions and tokens by UUID: a token that names
        // no one (an empty `sub`, which a consumer could read as "no filter") or
        // something else is none of its tokens, however it is signed.
        if plausible
            && [&claims.sub, &claims.sid, &claims.jti]
                .iter()
                .all(|id| uuid::Uuid::parse_str(id).is_ok())
        {
            Ok(claims)
        } else {
            Err(TokenError::Invalid)
        }
    }
}

#[cfg(test)]
mod tests {
    //! The attack set: every token here must be refused.
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;
    use crate::SigningKey;

    const ISS: &str = "https://issuer.test";
    const AUD: &str = "aia";

    fn now() -> i64 {
        jsonwebtoken::get_current_timestamp() as i64
    }

    fn claims() -> AccessClaims {
        AccessClaims {
            iss: ISS.into(),
            aud: AUD.into(),
            sub: "0b6a3f4e-5c1d-4e8a-9f2b-7d1c3e5a9b01".into(),
            exp: now() + 600,
            iat: now(),
            nbf: now(),
            jti: "5e2d8c71-3a4b-4f6e-8d9c-1b2a3c4d5e6f".into(),
            sid: "9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d".into(),
            roles: vec!["user".into()],
            amr: vec!["pwd".into()],
        }
    }

    fn setup() -> Result<(SigningKey, Verifier), Box<dyn std::error::Error>> {
        let key = SigningKey::generate()?;
        let verifier = Verifier::new(
            &Jwks {
                keys: vec![key.jwk().clone()],
            },
            ISS,
            AUD,
        );
        Ok((key, verifier))
    }

    fn b64(v: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    /// A token with a hand-made header over the payload and signature of `good`.
    fn with_header(good: &str, header: serde_json::Value) -> String {
        let mut parts = good.splitn(2, '.');
        let _ = parts.next();
        format!("{}.{}", b64(&header), parts.next().unwrap_or_default())
    }

    #[test]
    fn a_token_it_signed_verifies() -> Result<(), Box<dyn std::error::Error>> {
        let (key, verifier) = setup()?;
        let token = key.sign(&claims())?;
        assert_eq!(verifier.verify(&token)?, claims());
        Ok(())
    }

    #[test]
    fn a_signed_token_naming_no_one_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let (key, verifier) = setup()?;
        for (sub, sid, jti) in [
            ("", None, None),
            ("user", None, None),
            ("*", None, None),
            ("0b6a3f4e-5c1d-4e8a-9f2b-7d1c3e5a9b01", Some(""), None),
            ("0b6a3f4e-5c1d-4e8a-9f2b-7d1c3e5a9b01", None, Some("jti")),
        ] {
            let mut claims = claims();
            claims.sub = sub.to_owned();
            if let Some(sid) = sid {
                claims.sid = sid.to_owned();
            }
            if let Some(jti) = jti {
                claims.jti = jti.to_owned();
            }
            let refused = verifier.verify(&key.sign(&claims)?);
            assert!(
                matches!(refused, Err(TokenError::Invalid)),
                "{sub:?} {sid:?} {jti:?}: {refused:?}"
            );
        }
        Ok(())
    }

    /// A token claiming more than the largest lifetime auth issues, or issued in
    /// the future, is refused however well it is signed (a leaked key's forgeries).
    #[test]
    fn an_implausible_lifetime_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let (key, verifier) = setup()?;
        let mut long = claims();
        long.exp = long.iat + MAX_LIFETIME_SECONDS + 1;
        assert_eq!(verifier.verify(&key.sign(&long)?), Err(TokenError::Invalid));
        let mut ahead = claims();
        ahead.iat = now() + 3600;
        ahead.exp = ahead.iat + 600;
        assert_eq!(
            verifier.verify(&key.sign(&ahead)?),
            Err(TokenError::Invalid)
        );
        let mut longest = claims();
        longest.exp = longest.iat + MAX_LIFETIME_SECONDS;
        assert!(verifier.verify(&key.sign(&longest)?).is_ok());
        Ok(())
    }

    #[test]
    fn alg_none_in_any_case_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let (_, verifier) = setup()?;
        for alg in ["none", "NoNe", "NONE"] {
            let token = format!(
                "{}.{}.",
                b64(&serde_json::json!({"alg": alg, "typ": "at+jwt"})),
                b64(&serde_json::to_value(claims())?)
            );
            assert!(verifier.verify(&token).is_err(), "{alg}");
        }
        Ok(())
    }

    #[test]
    fn hs256_signed_with_the_public_key_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let (key, verifier) = setup()?;
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.typ = Some("at+jwt".into());
        header.kid = Some(key.kid().into());
        let forged = jsonwebtoken::encode(
            &header,
            &claims(),
            &jsonwebtoken::EncodingKey::from_secret(key.jwk().x.as_bytes()),
        )?;
        assert_eq!(verifier.verify(&forged), Err(TokenError::Algorithm));
        Ok(())
    }

    #[test]
    fn a_token_from_another_key_with_the_same_kid_is_refused()
    -> Result<(), Box<dyn std::error::Error>> {
        let (key, verifier) = setup()?;
        let other = SigningKey::generate()?;
        let forged = other.sign(&claims())?;
        let forged = with_header(
            &forged,
            serde_json::json!({"alg": "EdDSA", "typ": "at+jwt", "kid": key.kid()}),
        );
        assert_eq!(verifier.verify(&forged), Err(TokenError::Invalid));
        Ok(())
    }

    #[test]
    fn a_tampered_payload_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let (key, verifier) = setup()?;
        let token = key.sign(&claims())?;
        let parts: Vec<&str> = token.split('.').collect();
        let mut c = claims();
        c.sub = "admin".into();
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            b64(&serde_json::to_value(c)?),
            parts[2]
        );
        assert_eq!(verifier.verify(&tampered), Err(TokenError::Invalid));
        let stripped = format!("{}.{}.", parts[0], parts[1]);
        assert!(verifier.verify(&stripped).is_err());
        Ok(())
    }

    #[test]
    fn expired_premature_and_misaddressed_tokens_are_refused()
    -> Result<(), Box<dyn std::error::Error>> {
        let (key, verifier) = setup()?;
        type Mutation = fn(&mut AccessClaims);
        let cases: [(&str, Mutation); 4] = [
            ("expired", |c| c.exp = now() - 120),
            ("not yet valid", |c| c.nbf = now() + 120),
            ("wrong audience", |c| c.aud = "other".into()),
            ("wrong issuer", |c| c.iss = "https://evil.test".into()),
        ];
        for (name, mutate) in cases {
            let mut c = claims();
            mutate(&mut c);
            assert!(verifier.verify(&key.sign(&c)?).is_err(), "{name}");
        }
        Ok(())
    }

    #[test]
    fn a_token_missing_exp_or_nbf_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let (key, verifier) = setup()?;
        let mut header = jsonwebtoken::Header::new(Algorithm::EdDSA);
        header.typ = Some("at+jwt".into());
        header.kid = Some(key.kid().into());
        for missing in ["exp", "nbf", "iss", "aud", "sub"] {
            let mut body = serde_json::to_value(claims())?;
            if let Some(map) = body.as_object_mut() {
                map.remove(missing);
            }
            let token = jsonwebtoken::encode(&header, &body, key.encoding_key())?;
            assert!(verifier.verify(&token).is_err(), "{missing}");
        }
        Ok(())
    }

    #[test]
    fn wrong_typ_unknown_kid_and_embedded_keys_are_refused()
    -> Result<(), Box<dyn std::error::Error>> {
        let (key, verifier) = setup()?;
        let good = key.sign(&claims())?;
        let kid = key.kid();
        let cases = [
            (
                serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}),
                TokenError::NotAnAccessToken,
            ),
            (
                serde_json::json!({"alg": "EdDSA", "kid": kid}),
                TokenError::NotAnAccessToken,
            ),
            (
                serde_json::json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "../../etc/passwd"}),
                TokenError::UnknownKey,
            ),
            (
                serde_json::json!({"alg": "EdDSA", "typ": "at+jwt"}),
                TokenError::UnknownKey,
            ),
            (
                serde_json::json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid, "jku": "https://evil.test/jwks"}),
                TokenError::ForbiddenHeader,
            ),
            (
                serde_json::json!({"alg": "EdDSA", "typ": "at+jwt", "kid": kid, "jwk": key.jwk()}),
                TokenError::ForbiddenHeader,
            ),
        ];
        for (header, expected) in cases {
            assert_eq!(
                verifier.verify(&with_header(&good, header.clone())),
                Err(expected),
                "{header}"
            );
        }
        Ok(())
    }

    #[test]
    fn garbage_and_oversized_input_is_malformed() -> Result<(), Box<dyn std::error::Error>> {
        let (_, verifier) = setup()?;
        for junk in [
            "",
            ".",
            "a.b.c",
            "ey.ey.ey",
            "\u{0}",
            &"a".repeat(MAX_TOKEN_BYTES + 1),
        ] {
            assert!(verifier.verify(junk).is_err());
        }
        Ok(())
    }

    mod properties {
        //! Properties over arbitrary input (issue #8): nothing but a token this key
        //! signed, unaltered, ever verifies, and no input panics.
        use super::*;
        use proptest::prelude::*;
        use std::sync::LazyLock;

        static SETUP: LazyLock<Option<(SigningKey, Verifier, String)>> = LazyLock::new(|| {
            let (key, verifier) = setup().ok()?;
            let token = key.sign(&claims()).ok()?;
            Some((key, verifier, token))
        });

        fn fixture() -> Result<&'static (SigningKey, Verifier, String), TestCaseError> {
            SETUP
                .as_ref()
                .ok_or_else(|| TestCaseError::fail("no signing key"))
        }

        const B64URL: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

        proptest! {

            #[test]
            fn arbitrary_text_never_verifies(text in "\\PC{0,400}") {
                let (_, verifier, _) = fixture()?;
                prop_assert!(verifier.verify(&text).is_err());
                let _ = Verifier::kid_of(&text);
            }

            #[test]
            fn arbitrary_three_part_tokens_never_verify(
                header in "[A-Za-z0-9_-]{0,120}",
                payload in "[A-Za-z0-9_-]{0,400}",
                signature in "[A-Za-z0-9_-]{0,120}",
            ) {
                let (_, verifier, _) = fixture()?;
                let token = format!("{header}.{payload}.{signature}");
                prop_assert!(verifier.verify(&token).is_err());
            }

            #[test]
            fn any_one_character_changed_breaks_the_token(
                at in any::<prop::sample::Index>(),
                with in any::<prop::sample::Index>(),
            ) {
                let (_, verifier, token) = fixture()?;
                let mut bytes = token.clone().into_bytes();
                let i = at.index(bytes.len());
                let replacement = B64URL.as_bytes()[with.index(B64URL.len())];
                prop_assume!(bytes[i] != b'.' && bytes[i] != replacement);
                bytes[i] = replacement;
                let altered = String::from_utf8(bytes)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(verifier.verify(&altered).is_err(), "{altered}");
            }
        }
    }
}
