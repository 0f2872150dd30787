package auth_test

import (
	"testing"
	"time"

	"github.com/passkeys/worker/auth"
	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/passkey"
)

// A cached token is still judged at each command's own time: the cache
// remembers the signature, never the verdict.
func TestCachedTokenClaimsStillJudged(t *testing.T) {
	keys := testenv.NewKeys(t)
	v := keys.Verifier(t)
	ks := keys.KeySet(t)
	now := time.Now()
	tok := []string{testenv.Bearer(keys.Mint(t, testenv.Token{Subject: "u1", Now: now, TTL: time.Hour}))}
	if _, err := v.Verify(tok, now, ks); err != nil {
		t.Fatal(err)
	}
	if got := v.CachedTokens(); got != 1 {
		t.Fatalf("cached %d tokens, want 1", got)
	}
	_, err := v.Verify(tok, now.Add(2*time.Hour), ks)
	if got := passkey.AsError(err).ID; got != passkey.IDAuthExpired {
		t.Fatalf("cached token past exp: %v, want %s", err, passkey.IDAuthExpired)
	}
	_, err = v.Verify(tok, now.Add(-time.Hour), ks)
	if got := passkey.AsError(err).ID; got != passkey.IDAuthNotYetValid {
		t.Fatalf("cached token before nbf: %v, want %s", err, passkey.IDAuthNotYetValid)
	}
}

// A token whose exp has passed (by the clock) is not kept.
func TestCacheDropsExpiredTokens(t *testing.T) {
	keys := testenv.NewKeys(t)
	v := keys.Verifier(t)
	ks := keys.KeySet(t)
	old := time.Now().Add(-2 * time.Hour)
	tok := []string{testenv.Bearer(keys.Mint(t, testenv.Token{Subject: "u1", Now: old, TTL: time.Hour}))}
	// A replayed command from two hours ago: valid at its time, expired now.
	if _, err := v.Verify(tok, old, ks); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(tok, old, ks); err != nil {
		t.Fatal(err)
	}
	if got := v.CachedTokens(); got != 0 {
		t.Fatalf("cached %d expired tokens, want 0", got)
	}
}

func TestCacheIsBounded(t *testing.T) {
	keys := testenv.NewKeys(t)
	v := keys.Verifier(t)
	ks := keys.KeySet(t)
	now := time.Now()
	for i := range auth.DefaultCacheSize + 10 {
		tok := []string{testenv.Bearer(keys.Mint(t, testenv.Token{Subject: "u1", Now: now.Add(time.Duration(i) * time.Second)}))}
		if _, err := v.Verify(tok, now.Add(time.Duration(i)*time.Second), ks); err != nil {
			t.Fatal(err)
		}
	}
	if got := v.CachedTokens(); got > auth.DefaultCacheSize {
		t.Fatalf("cache holds %d tokens, bound is %d", got, auth.DefaultCacheSize)
	}
}

// BenchmarkVerify compares a token seen for the first time (a signature
// check) with a repeated one (a cache hit), per algorithm.
func BenchmarkVerify(b *testing.B) {
	keys := testenv.NewKeys(b)
	ks := keys.KeySet(b)
	now := time.Now()
	for _, kid := range []string{"EdDSA", "ES256", "RS256", "PS256"} {
		tok := []string{testenv.Bearer(keys.Mint(b, testenv.Token{Kid: kid, Subject: "u1", Now: now}))}
		b.Run(kid+"/uncached", func(b *testing.B) {
			for range b.N {
				b.StopTimer()
				v := keys.Verifier(b) // a fresh, empty cache
				b.StartTimer()
				if _, err := v.Verify(tok, now, ks); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(kid+"/cached", func(b *testing.B) {
			v := keys.Verifier(b)
			for b.Loop() {
				if _, err := v.Verify(tok, now, ks); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
