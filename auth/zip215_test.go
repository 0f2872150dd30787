package auth_test

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"

	"filippo.io/edwards25519"
	"github.com/go-jose/go-jose/v4"

	"github.com/passkeys/worker/auth"
	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/passkey"
)

// zipTokens are tokens of the EdDSA test key that the two rules judge
// differently, with the verdict each rule gives ("" accepted).
type zipToken struct {
	name, token, rfc8032, zip215 string
}

func zipTokens(t *testing.T, keys *testenv.Keys) []zipToken {
	t.Helper()
	mint := func(sub string) string { return keys.Mint(t, testenv.Token{Subject: sub, Now: at}) }
	var out []zipToken
	for i := range 16 {
		out = append(out, zipToken{name: fmt.Sprint("good ", i), token: mint(fmt.Sprint("u", i)), rfc8032: "", zip215: ""})
	}
	out = append(out, zipToken{name: "small-order part in R", token: keys.Torsion(t, mint("torsion")),
		rfc8032: passkey.IDAuthSignature, zip215: ""})
	a, b := mint("a"), mint("b")
	out = append(out, zipToken{name: "another token's signature", token: a[:strings.LastIndexByte(a, '.')] + b[strings.LastIndexByte(b, '.'):],
		rfc8032: passkey.IDAuthSignature, zip215: passkey.IDAuthSignature})
	// The signature's last character carries 4 bits past its 64 bytes:
	// set, they decode to the same bytes, leniently.
	c := mint("noncanonical")
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	last := strings.IndexByte(alphabet, c[len(c)-1])
	out = append(out, zipToken{name: "non-canonical base64", token: c[:len(c)-1] + string(alphabet[last|1]),
		rfc8032: "", zip215: passkey.IDAuthMalformed})
	// A header with more than alg, kid, typ and cty.
	d := mint("header")
	head := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"EdDSA","kid":"EdDSA","typ":"JWT","x":"1"}`))
	input := head + d[strings.IndexByte(d, '.'):strings.LastIndexByte(d, '.')]
	sig := ed25519.Sign(keys.Private["EdDSA"].Key.(ed25519.PrivateKey), []byte(input))
	out = append(out, zipToken{name: "extra header", token: input + "." + base64.RawURLEncoding.EncodeToString(sig),
		rfc8032: "", zip215: passkey.IDAuthMalformed})
	// "ALG" besides "alg": encoding/json reads the last, go-jose only "alg".
	head = base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"EdDSA","kid":"EdDSA","ALG":"RS256","x":"1"}`))
	input = head + d[strings.IndexByte(d, '.'):strings.LastIndexByte(d, '.')]
	sig = ed25519.Sign(keys.Private["EdDSA"].Key.(ed25519.PrivateKey), []byte(input))
	out = append(out, zipToken{name: "two spellings of alg", token: input + "." + base64.RawURLEncoding.EncodeToString(sig),
		rfc8032: passkey.IDAuthKeyUnknown, zip215: passkey.IDAuthMalformed})
	return out
}

func verdict(err error) string {
	var perr *passkey.Error
	if errors.As(err, &perr) {
		return perr.ID
	}
	if err != nil {
		return err.Error()
	}
	return ""
}

// Each rule judges as it says, and under ZIP 215 a token checked in a
// batch (VerifyBatch, then VerifyWith) gets the verdict it gets alone: one
// bad signature among them splits the batch, not the verdicts.
func TestZIP215AloneAndInBatches(t *testing.T) {
	keys := testenv.NewKeys(t)
	rfc, err := auth.NewKeySet(keys.PublicSet("EdDSA"), testenv.Issuer, testenv.Audience, auth.RuleRFC8032)
	if err != nil {
		t.Fatal(err)
	}
	zip, err := auth.NewKeySet(keys.PublicSet("EdDSA"), testenv.Issuer, testenv.Audience, auth.RuleZIP215)
	if err != nil {
		t.Fatal(err)
	}
	if rfc.ID == zip.ID {
		t.Fatal("the two rules' sets share an ID: the token cache would mix their verdicts")
	}
	cases := zipTokens(t, keys)
	// Batches of them all (one bad signature splits it), and of all but
	// the bad signature (nothing to split: the batch takes every token it
	// can), each token twice (checked once).
	for _, withBad := range []bool{true, false} {
		batch := auth.NewVerifier()
		var tokens []auth.Token
		for _, c := range cases {
			if withBad || c.zip215 != passkey.IDAuthSignature {
				tokens = append(tokens, auth.Token{Authorization: []string{testenv.Bearer(c.token)}, At: at, Keys: zip})
			}
		}
		pre := batch.VerifyBatch(append(tokens, tokens...))
		if len(pre) < 8 || len(pre) > 17 || (!withBad && len(pre) != 17) { // one split: the half without the bad one
			t.Errorf("the batch (bad signature: %v) found %d signatures good, of the 17 good ones", withBad, len(pre))
		}
		for _, c := range cases {
			authz := []string{testenv.Bearer(c.token)}
			_, errRFC := auth.NewVerifier().Verify(authz, at, rfc)
			_, errZIP := auth.NewVerifier().Verify(authz, at, zip)
			_, errBatch := batch.VerifyWith(authz, at, zip, pre)
			if got := verdict(errRFC); got != c.rfc8032 {
				t.Errorf("%s under RFC 8032: %q, want %q", c.name, got, c.rfc8032)
			}
			if got := verdict(errZIP); got != c.zip215 {
				t.Errorf("%s under ZIP 215: %q, want %q", c.name, got, c.zip215)
			}
			if got := verdict(errBatch); got != c.zip215 {
				t.Errorf("%s under ZIP 215 after a batch (bad signature: %v): %q, want %q", c.name, withBad, got, c.zip215)
			}
		}
	}
}

// Under ZIP 215 a key set may not hold an Ed25519 key of small order
// (anyone could sign for it) or with a small-order part.
func TestZIP215RefusesSmallOrderKeys(t *testing.T) {
	keys := testenv.NewKeys(t)
	pub := keys.Private["EdDSA"].Key.(ed25519.PrivateKey).Public().(ed25519.PublicKey)
	A, err := new(edwards25519.Point).SetBytes(pub)
	if err != nil {
		t.Fatal(err)
	}
	order2, _ := new(edwards25519.Point).SetBytes(append(append([]byte{0xec}, []byte(strings.Repeat("\xff", 30))...), 0x7f))
	identity := append([]byte{1}, make([]byte, 31)...)
	for name, key := range map[string][]byte{
		"small-order part": new(edwards25519.Point).Add(A, order2).Bytes(),
		"identity":         identity,
	} {
		set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: ed25519.PublicKey(key), KeyID: "k", Algorithm: "EdDSA"}}}
		if _, err := auth.NewKeySet(set, testenv.Issuer, testenv.Audience, auth.RuleRFC8032); err != nil && name != "identity" { // go-jose refuses that one
			t.Errorf("%s under RFC 8032 (as the versions before): %v", name, err)
		}
		if _, err := auth.NewKeySet(set, testenv.Issuer, testenv.Audience, auth.RuleZIP215); err == nil {
			t.Errorf("%s under ZIP 215: accepted", name)
		}
	}
	if _, err := auth.NewKeySet(keys.PublicSet("EdDSA"), testenv.Issuer, testenv.Audience, "zip999"); err == nil {
		t.Error("an unknown rule: accepted")
	}
}

// The test helper's torsion signature is what it says: without the order-2
// point it is the standard signature.
func TestTorsionHelper(t *testing.T) {
	keys := testenv.NewKeys(t)
	priv := keys.Private["EdDSA"].Key.(ed25519.PrivateKey)
	sig := testenv.SignWithTorsion(priv, []byte("m"))
	if ed25519.Verify(priv.Public().(ed25519.PublicKey), []byte("m"), sig) {
		t.Fatal("Go's check accepts the torsion signature: it would test nothing")
	}
}
