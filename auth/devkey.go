package auth

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// The development defaults: what the worker trusts, and the publisher mints
// for, when it runs fully embedded with no JWKS of its own.
const (
	DevIssuer     = "passkeys-dev"
	DevAudience   = "passkeys"
	DevKeyFile    = "dev-signing-key.jwk"
	devKeyIDBytes = 8
)

// LoadOrCreateDevKey returns the development signing key kept in dir,
// creating it (mode 0600) when there is none. created tells which.
func LoadOrCreateDevKey(dir string) (key jose.JSONWebKey, created bool, err error) {
	path := filepath.Join(dir, DevKeyFile)
	key, err = LoadDevKey(dir)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return key, false, err
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return key, false, fmt.Errorf("generate development key: %w", err)
	}
	kid := make([]byte, devKeyIDBytes)
	if _, err := rand.Read(kid); err != nil {
		return key, false, err
	}
	key = jose.JSONWebKey{Key: priv, KeyID: fmt.Sprintf("dev-%x", kid), Algorithm: string(jose.EdDSA), Use: "sig"}
	raw, err := json.Marshal(key)
	if err != nil {
		return key, false, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return key, false, err
	}
	// O_EXCL: two processes starting at once must not both write a key.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		key, err = LoadDevKey(dir)
		return key, false, err
	}
	if err != nil {
		return key, false, fmt.Errorf("create development key: %w", err)
	}
	if _, err := f.Write(raw); err != nil {
		f.Close()
		return key, false, fmt.Errorf("write development key: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return key, false, err
	}
	return key, true, f.Close()
}

// LoadDevKey reads the development signing key from dir.
func LoadDevKey(dir string) (jose.JSONWebKey, error) {
	var key jose.JSONWebKey
	raw, err := os.ReadFile(filepath.Join(dir, DevKeyFile))
	if err != nil {
		return key, err
	}
	if err := json.Unmarshal(raw, &key); err != nil {
		return key, fmt.Errorf("parse development key %s: %w", filepath.Join(dir, DevKeyFile), err)
	}
	if key.IsPublic() || !key.Valid() {
		return key, fmt.Errorf("development key %s is not a private key", filepath.Join(dir, DevKeyFile))
	}
	return key, nil
}

// PublicSet is the key set that trusts key's public half.
func PublicSet(key jose.JSONWebKey) jose.JSONWebKeySet {
	return jose.JSONWebKeySet{Keys: []jose.JSONWebKey{key.Public()}}
}

// TokenRequest says what a minted token claims.
type TokenRequest struct {
	Subject  string
	Org      string
	Scopes   []string
	Issuer   string
	Audience string
	TTL      time.Duration
	Now      time.Time
}

// Mint signs a token with a private key: for the development key and tests.
func Mint(key jose.JSONWebKey, req TokenRequest) (string, error) {
	alg := jose.SignatureAlgorithm(key.Algorithm)
	if alg == "" {
		alg = jose.EdDSA
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return "", fmt.Errorf("signer: %w", err)
	}
	now := req.Now
	if now.IsZero() {
		now = time.Now()
	}
	c := Claims{
		Claims: jwt.Claims{
			Subject:   req.Subject,
			Issuer:    req.Issuer,
			Audience:  jwt.Audience{req.Audience},
			IssuedAt:  jwt.NewNumericDate(now),
			NotBefore: jwt.NewNumericDate(now),
			Expiry:    jwt.NewNumericDate(now.Add(req.TTL)),
		},
		Scope: strings.Join(req.Scopes, " "),
		Org:   req.Org,
	}
	return jwt.Signed(signer).Claims(c).Serialize()
}
