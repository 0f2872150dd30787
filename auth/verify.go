// Package auth verifies the bearer tokens that come with every command and
// turns them into a passkey.Principal. Signatures are checked by go-jose;
// this package only chooses keys, algorithms and claims.
package auth

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	josejson "github.com/go-jose/go-jose/v4/json"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/passkeys/worker/passkey"
)

// Leeway is the clock skew allowed when judging exp, nbf and iat.
const Leeway = 30 * time.Second

// Scopes that widen what a principal may do.
const (
	ScopeAdmin  = "passkeys:admin"
	ScopeSystem = "passkeys:system"
)

// allowedAlgorithms are the only signature algorithms a token may use (unexported:
// a security allow-list no other package may append to). HMAC
// and "none" are refused: a verifier holding public keys must never accept a
// token "signed" with one of them.
var allowedAlgorithms = []jose.SignatureAlgorithm{jose.RS256, jose.PS256, jose.ES256, jose.EdDSA}

// Claims are the claims this service reads from a token; Org is the
// principal's organisation.
type Claims struct {
	jwt.Claims
	Scope string `json:"scope,omitempty"`
	Org   string `json:"urn:zitadel:iam:user:resourceowner:id,omitempty"`
}

// Verifier checks tokens against a KeySet, which each call names: it
// holds no keys of its own. Which set judges a command is decided by the
// command's place in the stream (package trust), so every worker, every
// replay and every rebuild judges it alike. It keeps the tokens whose
// signature verified, per key set; safe for concurrent use.
type Verifier struct {
	cache *tokenCache
}

// NewVerifier returns a Verifier with an empty token cache.
func NewVerifier() *Verifier { return &Verifier{cache: newTokenCache(DefaultCacheSize)} }

// KeySet is a set of trusted public keys and the issuer and audience its
// tokens must name. ID is a digest of all three: two sets with the same ID
// trust the same, so the token cache keys by it.
type KeySet struct {
	ID               uint64
	Keys             jose.JSONWebKeySet
	Issuer, Audience string
	// Rule is how its EdDSA signatures are checked.
	Rule Rule
}

// NewKeySet checks keys (CheckKeySet, and under RuleZIP215 each Ed25519
// key for a small-order part) and returns the set that requires iss to
// equal issuer and aud to contain audience, checked by rule.
func NewKeySet(keys jose.JSONWebKeySet, issuer, audience string, rule Rule) (*KeySet, error) {
	if issuer == "" || audience == "" {
		return nil, errors.New("auth: issuer and audience are required")
	}
	if !rule.Known() {
		return nil, fmt.Errorf("auth: unknown verification rule %q", rule)
	}
	if err := CheckKeySet(keys); err != nil {
		return nil, err
	}
	for _, k := range keys.Keys {
		if err := checkZIP215Key(k); rule == RuleZIP215 && err != nil {
			return nil, err
		}
	}
	raw, err := json.Marshal(struct {
		K    jose.JSONWebKeySet
		I, A string
		R    Rule `json:",omitempty"` // absent for the default: the IDs of the versions before stay
	}{keys, issuer, audience, rule})
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(raw)
	return &KeySet{ID: binary.BigEndian.Uint64(sum[:8]), Keys: keys, Issuer: issuer, Audience: audience, Rule: rule}, nil
}

// LoadJWKS reads a JSON Web Key Set file holding public keys.
func LoadJWKS(path string) (jose.JSONWebKeySet, error) {
	var keys jose.JSONWebKeySet
	raw, err := os.ReadFile(path)
	if err != nil {
		return keys, fmt.Errorf("read JWKS: %w", err)
	}
	if err := json.Unmarshal(raw, &keys); err != nil {
		return keys, fmt.Errorf("parse JWKS %s: %w", path, err)
	}
	if err := CheckKeySet(keys); err != nil {
		return keys, fmt.Errorf("JWKS %s: %w", path, err)
	}
	return keys, nil
}

// CheckKeySet refuses an empty set and any key that is not a public
// asymmetric key of an allowed algorithm: a symmetric key in the set would
// let anyone who knows it (or the public half of another key) mint tokens.
func CheckKeySet(keys jose.JSONWebKeySet) error {
	if len(keys.Keys) == 0 {
		return errors.New("the key set holds no key")
	}
	for i, k := range keys.Keys {
		if !k.Valid() || !k.IsPublic() {
			return fmt.Errorf("key %d (kid %q) is not a valid public key", i, k.KeyID)
		}
		if k.Algorithm != "" && !slices.Contains(allowedAlgorithms, jose.SignatureAlgorithm(k.Algorithm)) {
			return fmt.Errorf("key %d (kid %q) has algorithm %q, allowed are RS256, PS256, ES256, EdDSA", i, k.KeyID, k.Algorithm)
		}
	}
	return nil
}

// Verify authenticates the Authorization header values of a command by
// the key set ks, judging exp and nbf at time at (the command's stream
// timestamp).
//
// Errors: UNAUTHENTICATED (AUTH-MISSING, AUTH-MALFORMED, AUTH-ALGORITHM,
// AUTH-KEY-UNKNOWN, AUTH-SIGNATURE, AUTH-ISSUER, AUTH-AUDIENCE, AUTH-EXPIRED,
// AUTH-NOT-YET-VALID, AUTH-CLAIMS).
func (v *Verifier) Verify(authorization []string, at time.Time, ks *KeySet) (passkey.Principal, error) {
	return v.VerifyWith(authorization, at, ks, nil)
}

// VerifyWith is Verify, taking a token's signature as checked when
// VerifyBatch found it good (pre): the same verdict, for less.
func (v *Verifier) VerifyWith(authorization []string, at time.Time, ks *KeySet, pre Verified) (passkey.Principal, error) {
	raw, err := bearer(authorization)
	if err != nil {
		return passkey.Principal{}, err
	}
	key := tokenKey(ks, raw)
	if claims, ok := pre[key]; ok {
		v.cache.put(key, claims)
		return checkClaims(claims, ks.Issuer, ks.Audience, at)
	}
	if claims, ok := v.cache.get(key); ok {
		return checkClaims(claims, ks.Issuer, ks.Audience, at)
	}
	alg, err := headerAlgorithm(raw)
	if err != nil {
		return passkey.Principal{}, err
	}
	if !slices.Contains(allowedAlgorithms, alg) {
		return passkey.Principal{}, passkey.ErrAuthAlgorithm
	}
	jws, err := jose.ParseSignedCompact(raw, allowedAlgorithms)
	if err != nil || len(jws.Signatures) != 1 {
		return passkey.Principal{}, passkey.ErrAuthNotJWT
	}
	if ks.Rule == RuleZIP215 {
		if err := checkZIP215Token(raw, jws, alg); err != nil {
			return passkey.Principal{}, err
		}
	}
	claims, err := verifySignature(raw, jws, alg, ks)
	if err != nil {
		return passkey.Principal{}, err
	}
	v.cache.put(key, claims)
	return checkClaims(claims, ks.Issuer, ks.Audience, at)
}

// tokenKey is the token cache's key of raw under ks: the same token may
// verify under one key set and not another, so it is kept per key set.
func tokenKey(ks *KeySet, raw string) [sha256.Size]byte {
	return sha256.Sum256(append(binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(raw)), ks.ID), raw...))
}

// verifySignature finds the key the token names (or, without a kid, tries
// every key of a matching algorithm) and returns the claims it signed.
func verifySignature(raw string, jws *jose.JSONWebSignature, alg jose.SignatureAlgorithm, ks *KeySet) (Claims, error) {
	kid := jws.Signatures[0].Header.KeyID
	tried := false
	for _, k := range ks.Keys.Keys {
		if (kid != "" && k.KeyID != kid) || (k.Algorithm != "" && k.Algorithm != string(alg)) {
			continue
		}
		tried = true
		var payload []byte
		var err error
		if pub, ok := k.Key.(ed25519.PublicKey); ok && ks.Rule == RuleZIP215 && alg == jose.EdDSA {
			payload, err = verifyZIP215(raw, jws, pub)
		} else {
			payload, err = jws.Verify(k.Key)
		}
		if err != nil {
			continue // not this key's signature
		}
		// The signature holds; claims of the wrong type (exp as a string,
		// a numeric sub, scope as an array) are bad claims, not a bad
		// signature. go-jose's own json matches keys case-sensitively.
		var c Claims
		if err := josejson.Unmarshal(payload, &c); err != nil {
			return Claims{}, passkey.ErrAuthClaimTypes
		}
		return c, nil
	}
	if !tried {
		return Claims{}, passkey.ErrAuthKeyUnknown
	}
	return Claims{}, passkey.ErrAuthSignature
}

func checkClaims(c Claims, issuer, audience string, at time.Time) (passkey.Principal, error) {
	if c.Subject == "" || c.Expiry == nil {
		return passkey.Principal{}, passkey.ErrAuthNoSubOrExp
	}
	err := c.ValidateWithLeeway(jwt.Expected{Issuer: issuer, AnyAudience: jwt.Audience{audience}, Time: at}, Leeway)
	switch {
	case err == nil:
	case errors.Is(err, jwt.ErrInvalidIssuer):
		return passkey.Principal{}, passkey.ErrAuthIssuer
	case errors.Is(err, jwt.ErrInvalidAudience):
		return passkey.Principal{}, passkey.ErrAuthAudience
	case errors.Is(err, jwt.ErrExpired):
		return passkey.Principal{}, passkey.ErrAuthExpired
	case errors.Is(err, jwt.ErrNotValidYet), errors.Is(err, jwt.ErrIssuedInTheFuture):
		return passkey.Principal{}, passkey.ErrAuthNotYetValid
	default:
		return passkey.Principal{}, passkey.ErrAuthClaims
	}
	p := passkey.Principal{Issuer: c.Issuer, Subject: c.Subject, Org: c.Org}
	for _, s := range strings.Fields(c.Scope) {
		switch s {
		case ScopeAdmin:
			p.Admin = true
		case ScopeSystem:
			p.System = true
		}
	}
	return p, nil
}

// bearer takes the token out of the one Authorization header a command may carry.
func bearer(values []string) (string, error) {
	switch len(values) {
	case 0:
		return "", passkey.ErrAuthMissing
	case 1:
	default:
		return "", passkey.ErrAuthTwice
	}
	scheme, token, ok := strings.Cut(values[0], " ")
	token = strings.TrimSpace(token)
	switch {
	case !ok || !strings.EqualFold(scheme, "Bearer") || token == "":
		return "", passkey.ErrAuthNotBearer
	case len(token) > passkey.MaxTokenSize:
		return "", passkey.ErrAuthTooLarge
	}
	return token, nil
}

// headerAlgorithm reads the alg of a compact JWS header, only to tell a
// refused algorithm from a malformed token; nothing is trusted from it.
func headerAlgorithm(token string) (jose.SignatureAlgorithm, error) {
	head, _, ok := strings.Cut(token, ".")
	var h struct {
		Alg string `json:"alg"`
	}
	raw, err := base64.RawURLEncoding.DecodeString(head)
	if !ok || err != nil || json.Unmarshal(raw, &h) != nil || h.Alg == "" {
		return "", passkey.ErrAuthNotJWT
	}
	return jose.SignatureAlgorithm(h.Alg), nil
}
