package auth

import (
	"crypto/sha256"
	"encoding/binary"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"
)

func cacheKey(i int) [sha256.Size]byte {
	var k [sha256.Size]byte
	binary.BigEndian.PutUint64(k[:], uint64(i))
	return k
}

// Full, the cache forgets the least recently used token: one that keeps
// being used stays while many new ones pass through.
func TestCacheForgetsLeastRecentlyUsed(t *testing.T) {
	c := newTokenCache(100)
	claims := Claims{Claims: jwt.Claims{Subject: "u", Expiry: jwt.NewNumericDate(time.Now().Add(time.Hour))}}
	c.put(cacheKey(-1), claims)
	for i := range 1000 {
		c.put(cacheKey(i), claims)
		if _, ok := c.get(cacheKey(-1)); !ok {
			t.Fatalf("the token in use was forgotten after %d others", i+1)
		}
	}
	if c.lru.Len() != 100 {
		t.Fatalf("cache holds %d, bound 100", c.lru.Len())
	}
	if _, ok := c.get(cacheKey(0)); ok {
		t.Fatal("the oldest unused token is still there")
	}
}

// What a new token costs the cache once it is full, as when every caller
// brings its own token: the old cache walked every entry on each insert.
func BenchmarkCachePutFull(b *testing.B) {
	c := newTokenCache(DefaultCacheSize)
	claims := Claims{Claims: jwt.Claims{Subject: "u", Expiry: jwt.NewNumericDate(time.Now().Add(time.Hour))}}
	for i := range DefaultCacheSize {
		c.put(cacheKey(i), claims)
	}
	i := DefaultCacheSize
	for b.Loop() {
		c.put(cacheKey(i), claims)
		i++
	}
}
