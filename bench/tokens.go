package bench

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/passkeys/worker/auth"
)

// Issuer and audience of the bench's own keys.
const (
	benchIssuer   = "passkeys-bench"
	benchAudience = "passkeys"
)

// benchKeys are the keys an embedded worker is told to trust (a JWKS file
// in its data directory): EdDSA and RS256, the algorithm ZITADEL signs
// with by default.
type benchKeys struct {
	keys             map[string]jose.JSONWebKey // by algorithm
	issuer, audience string
	jwksPath         string // "" for keys the bench did not make
}

// devKeys are the development key in dir (EdDSA), for a worker run with
// --jwks from `publisher jwks`: what the bench can sign for against
// --nats-url.
func devKeys(dir string) (*benchKeys, error) {
	key, err := auth.LoadDevKey(dir)
	if err != nil {
		return nil, err
	}
	return &benchKeys{keys: map[string]jose.JSONWebKey{"EdDSA": key}, issuer: auth.DevIssuer, audience: auth.DevAudience}, nil
}

func newBenchKeys(dir string) (*benchKeys, error) {
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	rs, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	k := &benchKeys{keys: map[string]jose.JSONWebKey{
		"EdDSA": {Key: ed, KeyID: "bench-eddsa", Algorithm: "EdDSA", Use: "sig"},
		"RS256": {Key: rs, KeyID: "bench-rs256", Algorithm: "RS256", Use: "sig"},
	}, issuer: benchIssuer, audience: benchAudience, jwksPath: filepath.Join(dir, "bench-jwks.json")}
	var set jose.JSONWebKeySet
	for _, key := range k.keys {
		set.Keys = append(set.Keys, key.Public())
	}
	raw, err := json.Marshal(set)
	if err != nil {
		return nil, err
	}
	return k, os.WriteFile(k.jwksPath, raw, 0o600)
}

// mint signs a token for sub with the key of alg.
func (k *benchKeys) mint(alg, sub string, admin bool) (string, error) {
	key, ok := k.keys[alg]
	if !ok {
		return "", fmt.Errorf("no %s key to sign with (against --nats-url the bench has the development key, EdDSA)", alg)
	}
	req := auth.TokenRequest{Subject: sub, Issuer: k.issuer, Audience: k.audience, TTL: 24 * time.Hour}
	if admin {
		req.Org, req.Scopes = "bench-org", []string{auth.ScopeAdmin}
	}
	return auth.Mint(key, req)
}

// userTokens mints one self-service token for each of n users, on every
// core (an RS256 signature takes about a millisecond).
func (k *benchKeys) userTokens(alg string, n int) ([]string, error) {
	toks := make([]string, n)
	errs := make([]error, runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	for w := range errs {
		wg.Go(func() {
			for u := w; u < n; u += len(errs) {
				if toks[u], errs[w] = k.mint(alg, UserID(u), false); errs[w] != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return toks, nil
}
