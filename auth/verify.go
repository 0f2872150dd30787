// Package auth verifies the bearer tokens that come with every command and
// turns them into a passkey.Principal. Signatures are checked by go-jose;
// this package only chooses keys, algorithms and claims.
package auth

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
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

// Verifier checks tokens against a JSON Web Key Set, an issuer and an
// audience. It is safe for concurrent use; SetHistory swaps the key sets.
//
// It may hold a history of key sets (SetHistory), each in force from a
// time on: a token is judged by the key set in force at the time given to
// Verify (a command's stream timestamp), so a command replayed after a
// rotation is judged by the keys trusted when it was stored, on every
// worker alike.
type Verifier struct {
	issuer   string
	audience string

	mu   sync.RWMutex
	eras []KeyEra // sorted by From; eras[0] is in force before its From too
	gen  uint64   // bumped with every change, part of the cache key

	cache *tokenCache
}

// KeyEra is a key set and the time from which it is in force, with the
// issuer and audience its tokens must name ("": the Verifier's own).
type KeyEra struct {
	From             time.Time
	Keys             jose.JSONWebKeySet
	Issuer, Audience string
}

// NewVerifier returns a Verifier that trusts keys, requires iss to equal
// issuer and aud to contain audience.
func NewVerifier(keys jose.JSONWebKeySet, issuer, audience string) (*Verifier, error) {
	if issuer == "" || audience == "" {
		return nil, errors.New("auth: issuer and audience are required")
	}
	if err := CheckKeySet(keys); err != nil {
		return nil, err
	}
	return &Verifier{issuer: issuer, audience: audience, eras: []KeyEra{{Keys: keys}}, cache: newTokenCache(DefaultCacheSize)}, nil
}

// SetHistory replaces the trusted keys with a history of key sets. The
// first is in force before its From too.
func (v *Verifier) SetHistory(eras []KeyEra) error {
	if len(eras) == 0 {
		return errors.New("auth: an empty key history")
	}
	for _, e := range eras {
		if err := CheckKeySet(e.Keys); err != nil {
			return err
		}
	}
	sorted := slices.Clone(eras)
	slices.SortStableFunc(sorted, func(a, b KeyEra) int { return a.From.Compare(b.From) })
	v.mu.Lock()
	v.eras = sorted
	v.gen++
	// Under the lock, so no verification against the old keys can refill
	// the cache after it is cleared.
	v.cache.lru.Purge()
	v.mu.Unlock()
	return nil
}

// keysAt is the era in force at time at, and its cache generation.
func (v *Verifier) keysAt(at time.Time) (*KeyEra, uint64) {
	i := len(v.eras) - 1
	for i > 0 && v.eras[i].From.After(at) {
		i--
	}
	return &v.eras[i], v.gen<<16 | uint64(i)
}

// expected is the issuer and audience e's tokens must name.
func (v *Verifier) expected(e *KeyEra) (string, string) {
	iss, aud := v.issuer, v.audience
	if e.Issuer != "" {
		iss = e.Issuer
	}
	if e.Audience != "" {
		aud = e.Audience
	}
	return iss, aud
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

// Verify authenticates the Authorization header values of a command, judging
// exp and nbf at time at (the command's stream timestamp).
//
// Errors: UNAUTHENTICATED (AUTH-MISSING, AUTH-MALFORMED, AUTH-ALGORITHM,
// AUTH-KEY-UNKNOWN, AUTH-SIGNATURE, AUTH-ISSUER, AUTH-AUDIENCE, AUTH-EXPIRED,
// AUTH-NOT-YET-VALID, AUTH-CLAIMS).
func (v *Verifier) Verify(authorization []string, at time.Time) (passkey.Principal, error) {
	raw, err := bearer(authorization)
	if err != nil {
		return passkey.Principal{}, err
	}
	v.mu.RLock()
	inForce, era := v.keysAt(at)
	keys := inForce.Keys.Keys
	issuer, audience := v.expected(inForce)
	v.mu.RUnlock()
	// The same token may verify under one key set and not another: the
	// cache keeps it per key set.
	key := sha256.Sum256(append(binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(raw)), era), raw...))
	if claims, ok := v.cache.get(key); ok {
		return checkClaims(claims, issuer, audience, at)
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
	claims, err := v.verifySignature(jws, alg, keys, era, key)
	if err != nil {
		return passkey.Principal{}, err
	}
	return checkClaims(claims, issuer, audience, at)
}

// verifySignature finds the key the token names (or, without a kid, tries
// every key of a matching algorithm) and returns the claims it signed.
func (v *Verifier) verifySignature(jws *jose.JSONWebSignature, alg jose.SignatureAlgorithm, keys []jose.JSONWebKey, era uint64,
	cacheKey [sha256.Size]byte) (Claims, error) {
	kid := jws.Signatures[0].Header.KeyID
	tried := false
	for _, k := range keys {
		if (kid != "" && k.KeyID != kid) || (k.Algorithm != "" && k.Algorithm != string(alg)) {
			continue
		}
		tried = true
		payload, err := jws.Verify(k.Key)
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
		v.mu.RLock()
		if _, now := v.keysAt(time.Time{}); now>>16 == era>>16 { // not cached past a change of keys
			v.cache.put(cacheKey, c)
		}
		v.mu.RUnlock()
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
