package auth

import (
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"strings"

	"filippo.io/edwards25519"
	"github.com/go-jose/go-jose/v4"
	"github.com/hdevalence/ed25519consensus"

	"github.com/passkeys/worker/passkey"
)

// Rule is how a key set's EdDSA signatures are checked. A control entry
// names it (trust), so it changes at a position in the stream: every
// command is checked by the rule of the entry before it, on every worker,
// in every replay.
type Rule string

const (
	// RuleRFC8032 (the default, and the only rule of the versions before)
	// checks each signature alone, by Go's crypto/ed25519 through go-jose:
	// the cofactorless equation.
	RuleRFC8032 Rule = ""
	// RuleZIP215 checks by ZIP 215 (github.com/hdevalence/ed25519consensus):
	// the cofactored equation, under which a signature checked in a batch
	// (VerifyBatch) and alone get the same verdict, for every input. Under
	// it a token must be canonical base64url, an EdDSA token's header may
	// hold only alg, kid, typ and cty, and a key set may not hold an
	// Ed25519 key with a small-order part (checkZIP215Key).
	RuleZIP215 Rule = "zip215"
)

// Known tells whether this version can check by r. An entry naming a rule
// it cannot is a newer version's: the partition waits for an upgrade
// rather than judge its commands by another rule.
func (r Rule) Known() bool { return r == RuleRFC8032 || r == RuleZIP215 }

// checkZIP215Key refuses an Ed25519 key that is not the canonical
// encoding of a point of the prime-order subgroup. A key of small order
// lets anyone sign under the cofactored equation, and one with a
// small-order part is none that a key generator makes; checked once, when
// the set is made, so that no signature check has to.
func checkZIP215Key(k jose.JSONWebKey) error {
	pub, ok := k.Key.(ed25519.PublicKey)
	if !ok {
		return nil
	}
	p, err := new(edwards25519.Point).SetBytes(pub)
	if err != nil || string(p.Bytes()) != string(pub) {
		return fmt.Errorf("key (kid %q) is not a canonical Ed25519 point", k.KeyID)
	}
	if new(edwards25519.Point).MultByCofactor(p).Equal(edwards25519.NewIdentityPoint()) == 1 ||
		!primeOrder(p) {
		return fmt.Errorf("key (kid %q) has a small-order part: refused under rule %s", k.KeyID, RuleZIP215)
	}
	return nil
}

// lMinus1 is ℓ - 1 as a canonical scalar: [ℓ-1]p + p = [ℓ]p.
var lMinus1, _ = edwards25519.NewScalar().SetCanonicalBytes([]byte{
	0xec, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10})

// primeOrder tells whether [ℓ]p is the identity: p has no small-order part.
func primeOrder(p *edwards25519.Point) bool {
	q := new(edwards25519.Point).VarTimeMultiScalarMult([]*edwards25519.Scalar{lMinus1}, []*edwards25519.Point{p})
	return q.Add(q, p).Equal(edwards25519.NewIdentityPoint()) == 1
}

// checkZIP215Token refuses, under RuleZIP215, a token that is not three
// parts of canonical base64url (go-jose decodes leniently and checks the
// signature over its own re-encoding, so a non-canonical token would sign
// other bytes than it shows), and an EdDSA token whose header holds more
// than alg, kid, typ and cty (crit, b64: what the signing input is would
// then be go-jose's to say). So the signing input is the token's first two
// parts as they stand, alone and in a batch.
func checkZIP215Token(raw string, jws *jose.JSONWebSignature, alg jose.SignatureAlgorithm) error {
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return passkey.ErrAuthNotJWT
	}
	for _, p := range parts {
		for i := range len(p) {
			if c := p[i]; !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return passkey.ErrAuthNotJWT
			}
		}
		if _, err := base64.RawURLEncoding.Strict().DecodeString(p); err != nil {
			return passkey.ErrAuthNotJWT
		}
	}
	h := jws.Signatures[0].Protected
	if h.Algorithm != string(alg) {
		// encoding/json (headerAlgorithm) matches "ALG" too, go-jose only
		// "alg": a header that reads as two algorithms is not plain.
		return passkey.ErrAuthNotJWT
	}
	if alg != jose.EdDSA {
		return nil
	}
	if h.JSONWebKey != nil || h.Nonce != "" {
		return passkey.ErrAuthNotJWT
	}
	for k := range h.ExtraHeaders {
		if k != jose.HeaderType && k != jose.HeaderContentType {
			return passkey.ErrAuthNotJWT
		}
	}
	return nil
}

// verifyZIP215 checks an EdDSA token's signature by pub under ZIP 215 and
// returns its payload; raw passed checkZIP215Token.
func verifyZIP215(raw string, jws *jose.JSONWebSignature, pub ed25519.PublicKey) ([]byte, error) {
	input := raw[:strings.LastIndexByte(raw, '.')]
	if !ed25519consensus.Verify(pub, []byte(input), jws.Signatures[0].Signature) {
		return nil, passkey.ErrAuthSignature
	}
	return jws.UnsafePayloadWithoutVerification(), nil
}
