package auth

import (
	"crypto/sha256"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
)

// DefaultCacheSize bounds the verified-token cache. A batch publisher signs
// every line with one token and a user's session reuses one, so a few
// thousand entries cover a busy worker.
const DefaultCacheSize = 4096

// tokenCache remembers tokens whose signature verified, keyed by a hash of
// the token, so that a repeated token costs a SHA-256 instead of a signature
// check (36 µs for EdDSA to 59 µs for RS256). It remembers only that the
// signature is good: the claims are still judged for every command at its
// own time. Entries are kept per key set (KeySet.ID); one is dropped once
// its token's exp has passed. Full, it forgets the least recently
// used token (hashicorp/golang-lru), at a cost that does not grow with its
// size: the walk over every entry it replaced took a third of the worker's
// CPU once 20,000 callers each brought their own token.
type tokenCache struct {
	lru *lru.Cache[[sha256.Size]byte, cachedToken]
	now func() time.Time
}

type cachedToken struct {
	claims Claims
	exp    time.Time
}

// newTokenCache returns a cache of max tokens; max must be positive.
func newTokenCache(max int) *tokenCache {
	c, err := lru.New[[sha256.Size]byte, cachedToken](max)
	if err != nil {
		panic(err) // only for a size <= 0
	}
	return &tokenCache{lru: c, now: time.Now}
}

func (c *tokenCache) get(key [sha256.Size]byte) (Claims, bool) {
	e, ok := c.lru.Get(key)
	if !ok {
		return Claims{}, false
	}
	if c.now().After(e.exp) {
		c.lru.Remove(key)
		return Claims{}, false
	}
	return e.claims, true
}

func (c *tokenCache) put(key [sha256.Size]byte, claims Claims) {
	if claims.Expiry == nil {
		return
	}
	exp := claims.Expiry.Time()
	if c.now().After(exp) {
		return // a replayed command's old token: judged, but not worth keeping
	}
	c.lru.Add(key, cachedToken{claims: claims, exp: exp})
}

// CachedTokens is how many verified tokens the cache holds, for tests and metrics.
func (v *Verifier) CachedTokens() int { return v.cache.lru.Len() }
