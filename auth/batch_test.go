package auth_test

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/passkeys/worker/auth"
	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/passkey"
)

// flipSignature returns tok with one bit of its signature changed.
func flipSignature(tb testing.TB, tok string) string {
	tb.Helper()
	dot := strings.LastIndexByte(tok, '.')
	sig, err := base64.RawURLEncoding.DecodeString(tok[dot+1:])
	if err != nil {
		tb.Fatal(err)
	}
	sig[10] ^= 1
	return tok[:dot+1] + base64.RawURLEncoding.EncodeToString(sig)
}

// Prepare verifies a batch's EdDSA signatures together and caches what
// holds, and changes no answer: each token gets from Verify what a
// Verifier that never batched gives it, a bad signature fails only itself,
// and a batch with one bad signature caches nothing (its tokens are then
// verified one by one).
func TestPrepareChangesNoAnswer(t *testing.T) {
	keys := testenv.NewKeys(t)
	other := testenv.NewKeys(t) // the same kids, other keys
	now := time.Now()
	var good []string
	for k := range 12 {
		good = append(good, keys.Mint(t, testenv.Token{Subject: fmt.Sprint("u", k)}))
	}
	badClaims := signClaims(t, keys, map[string]any{"sub": "u1", "exp": "tomorrow", "iss": testenv.Issuer, "aud": testenv.Audience})
	for _, tt := range []struct {
		name   string
		tokens []string
		cached int // what Prepare caches; -1: fewer than all (the bad token's batch is not cached)
	}{
		{"AllGood", good, len(good)},
		{"OneBadSignature", append([]string{flipSignature(t, good[0])}, good[1:]...), -1},
		{"ForeignKey", append([]string{other.Mint(t, testenv.Token{Subject: "u1"})}, good[1:]...), -1},
		{"BadClaimTypes", append([]string{badClaims}, good[1:]...), len(good) - 1},
		{"MixedAlgorithms", append([]string{keys.Mint(t, testenv.Token{Subject: "u1", Kid: "ES256"})}, good[1:]...), len(good) - 1},
		{"TooFew", good[:3], 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			batched, plain := keys.Verifier(t), keys.Verifier(t)
			toks := make([]auth.Token, len(tt.tokens))
			for i, tok := range tt.tokens {
				toks[i] = auth.Token{Authorization: []string{testenv.Bearer(tok)}, At: now}
			}
			batched.Prepare(toks)
			if got := batched.CachedTokens(); got != tt.cached && (tt.cached != -1 || got >= len(tt.tokens)-1) {
				t.Errorf("Prepare cached %d tokens, want %d", got, tt.cached)
			}
			for i, tok := range tt.tokens {
				p1, err1 := batched.Verify([]string{testenv.Bearer(tok)}, now)
				p2, err2 := plain.Verify([]string{testenv.Bearer(tok)}, now)
				if p1 != p2 || !errors.Is(err1, err2) && passkey.AsError(err1).ID != passkey.AsError(err2).ID {
					t.Errorf("token %d: after Prepare %+v, %v; without %+v, %v", i, p1, err1, p2, err2)
				}
			}
		})
	}
}

// A token from a retired key is not made valid by a batch: Prepare judges
// each token by the key set in force at its own time.
func TestPrepareJudgesByTheKeysInForce(t *testing.T) {
	keys := testenv.NewKeys(t)
	v := keys.Verifier(t)
	now := time.Now()
	retired := now.Add(-time.Minute)
	if err := v.SetHistory([]auth.KeyEra{{Keys: keys.PublicSet("EdDSA")}, {From: retired, Keys: keys.PublicSet("ES256")}}); err != nil {
		t.Fatal(err)
	}
	var toks []auth.Token
	for k := range 8 {
		toks = append(toks, auth.Token{Authorization: []string{testenv.Bearer(keys.Mint(t, testenv.Token{Subject: fmt.Sprint("u", k)}))}, At: now})
	}
	v.Prepare(toks)
	if n := v.CachedTokens(); n != 0 {
		t.Errorf("%d tokens of a retired key cached", n)
	}
	if _, err := v.Verify(toks[0].Authorization, now); passkey.AsError(err).ID != passkey.IDAuthKeyUnknown {
		t.Errorf("a retired key's token: %v", err)
	}
	// Judged at a time its key was in force, it holds.
	for i := range toks {
		toks[i].At = retired.Add(-time.Second)
	}
	v.Prepare(toks)
	if n := v.CachedTokens(); n != len(toks) {
		t.Errorf("%d of %d tokens cached at a time their key was in force", n, len(toks))
	}
}
