#!/usr/bin/env python3
"""JWT attacks against a running gateway, from outside the Rust code.

Usage:
  jwt_attacks.py --eddsa URL TOKEN --hs256 URL TOKEN SECRET

URL is a gateway's base URL, TOKEN a valid access token it issued. The first gateway
signs with Ed25519 (the default); the second with HS256 and SECRET, which lets this
script make correctly signed tokens with bad claims (expired, wrong audience...).

Each attack sends `GET /v1/auth/me` with a forged token. Controls come first: the
real tokens, and the HS256 token re-signed here with the same claims, must be
accepted (otherwise a refusal would prove nothing). Every attack must get a 4xx
(401 for a token that parses at all); a 2xx or 5xx fails the run. Prints one line per
attack and a summary; exits 0 when every attack was refused, 1 if any was not, 2 if a
control failed.
"""

import base64
import hashlib
import hmac
import json
import sys
import time
import urllib.error
import urllib.request

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def segment(obj) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def parts(token: str):
    header, claims, signature = token.split(".")
    return json.loads(unb64(header)), json.loads(unb64(claims)), signature


def status(base: str, token: str) -> int:
    request = urllib.request.Request(
        base + "/v1/auth/me", headers={"Authorization": "Bearer " + token}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def hs(header: dict, claims: dict, key: bytes) -> str:
    signing_input = segment(header) + "." + segment(claims)
    mac = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(mac)


def signed(private_key, alg: str, header: dict, claims: dict) -> str:
    extra = {k: v for k, v in header.items() if k not in ("alg", "typ")}
    return jwt.encode(claims, private_key, algorithm=alg, headers={"typ": header.get("typ", "JWT"), **extra})


def eddsa_attacks(base: str, token: str):
    header, claims, signature = parts(token)
    kid = header.get("kid", "")
    with urllib.request.urlopen(base + "/.well-known/jwks.json", timeout=10) as r:
        jwks = json.load(r)
    public_x = next(k["x"] for k in jwks["keys"] if k.get("kid") == kid)
    public_raw = unb64(public_x)
    public_pem = (
        ed25519.Ed25519PublicKey.from_public_bytes(public_raw)
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    attacker = ed25519.Ed25519PrivateKey.generate()
    attacker_jwk = {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64(attacker.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)),
    }
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    admin = dict(claims, roles=["user", "admin"])
    later = dict(claims, exp=claims["exp"] + 365 * 86400)
    head, body = token.split(".")[0], token.split(".")[1]

    yield "control: the real token", token, True
    for alg in ["none", "None", "NONE", "nOnE"]:
        h = dict(header, alg=alg)
        yield f"alg {alg}, no signature", f"{segment(h)}.{body}.", False
        yield f"alg {alg}, the real signature", f"{segment(h)}.{body}.{signature}", False
    yield "signature stripped", f"{head}.{body}.", False
    yield "signature missing (two parts)", f"{head}.{body}", False
    yield "tampered roles, real signature", f"{head}.{segment(admin)}.{signature}", False
    yield "tampered expiry, real signature", f"{head}.{segment(later)}.{signature}", False
    yield "tampered subject, real signature", f"{head}.{segment(dict(claims, sub='00000000-0000-0000-0000-000000000000'))}.{signature}", False
    for what, key in [
        ("raw public key", public_raw),
        ("base64url public key", public_x.encode()),
        ("PEM public key", public_pem),
        ("JWKS document", json.dumps(jwks).encode()),
    ]:
        yield f"HS256 signed with the {what}", hs(dict(header, alg="HS256"), claims, key), False
    yield "attacker's Ed25519 key, real kid", signed(attacker, "EdDSA", header, claims), False
    yield "attacker's key, unknown kid", signed(attacker, "EdDSA", dict(header, kid="no-such-key"), claims), False
    for path_kid in ["../../../../../../dev/null", "/etc/passwd", "' OR '1'='1", "%00", "kid\r\nx: y"]:
        yield f"attacker's key, kid {path_kid!r}", signed(attacker, "EdDSA", dict(header, kid=path_kid), claims), False
    yield "attacker's key, no kid", signed(attacker, "EdDSA", {k: v for k, v in header.items() if k != "kid"}, claims), False
    yield "embedded jwk (attacker's public key)", signed(attacker, "EdDSA", dict(header, jwk=attacker_jwk), claims), False
    yield "jku pointing elsewhere", signed(attacker, "EdDSA", dict(header, jku="http://127.0.0.1:9/jwks.json"), claims), False
    yield "x5u pointing elsewhere", signed(attacker, "EdDSA", dict(header, x5u="http://127.0.0.1:9/cert.pem"), claims), False
    yield "RS256 with an attacker's RSA key", signed(rsa_key, "RS256", dict(header, alg="RS256"), claims), False
    yield "ES256 with an attacker's EC key", signed(ec_key, "ES256", dict(header, alg="ES256"), claims), False
    yield "unknown crit extension", signed(attacker, "EdDSA", dict(header, crit=["exp"]), claims), False
    yield "real header and claims, signature of another token", f"{head}.{segment(later)}.{signature}", False
    yield "empty token", "", False
    yield "garbage", "not.a.jwt", False
    yield "non-JSON segments", f"{b64(b'{')}.{b64(b'[')}.{signature}", False
    yield "huge header (64 KiB)", f"{segment(dict(header, pad='A' * 65536))}.{body}.{signature}", False


def hs256_attacks(base: str, token: str, secret: str):
    header, claims, _ = parts(token)
    key = secret.encode()
    now = int(time.time())
    yield "control: the real HS256 token", token, True
    yield "control: the same claims re-signed here", hs(header, claims, key), True
    yield "expired 10 minutes ago", hs(header, dict(claims, exp=now - 600, iat=now - 1200, nbf=now - 1200), key), False
    yield "not valid for another hour (nbf)", hs(header, dict(claims, nbf=now + 3600), key), False
    yield "wrong audience", hs(header, dict(claims, aud="someone-else"), key), False
    yield "audience list without ours", hs(header, dict(claims, aud=["someone-else"]), key), False
    yield "wrong issuer", hs(header, dict(claims, iss="https://evil.example"), key), False
    yield "no exp", hs(header, {k: v for k, v in claims.items() if k != "exp"}, key), False
    yield "no aud", hs(header, {k: v for k, v in claims.items() if k != "aud"}, key), False
    yield "exp as a string", hs(header, dict(claims, exp=str(claims["exp"])), key), False
    yield "alg none on the HS256 gateway", f"{segment(dict(header, alg='none'))}.{segment(claims)}.", False
    yield "HS384 with the right secret", jwt.encode(claims, key, algorithm="HS384", headers={"typ": header.get("typ", "JWT")}), False
    yield "HS256 with a wrong secret", hs(header, claims, key + b"x"), False
    yield "HS256 with an empty secret", hs(header, claims, b""), False


def main(argv) -> int:
    try:
        e = argv.index("--eddsa")
        h = argv.index("--hs256")
        eddsa_url, eddsa_token = argv[e + 1], argv[e + 2]
        hs_url, hs_token, hs_secret = argv[h + 1], argv[h + 2], argv[h + 3]
    except (ValueError, IndexError):
        print(__doc__, file=sys.stderr)
        return 2
    refused = accepted = broken_controls = 0
    for base, attacks in [
        (eddsa_url, eddsa_attacks(eddsa_url, eddsa_token)),
        (hs_url, hs256_attacks(hs_url, hs_token, hs_secret)),
    ]:
        for name, token, control in attacks:
            code = status(base, token)
            if control:
                ok = code == 200
                broken_controls += 0 if ok else 1
                print(f"{'ok' if ok else 'CONTROL FAILED'}  {code}  {name}")
                continue
            if 400 <= code < 500:
                refused += 1
                print(f"refused  {code}  {name}")
            else:
                accepted += 1
                print(f"NOT REFUSED  {code}  {name}")
    print(f"{refused} attacks refused, {accepted} not refused, {broken_controls} controls failed")
    if broken_controls:
        return 2
    return 1 if accepted else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
