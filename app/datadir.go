package app

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/go-jose/go-jose/v4"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/auth"
)

// buildKeys is the key set this worker is given: its --jwks file, or the
// development key.
func buildKeys(cfg *Config, log zerolog.Logger) (jose.JSONWebKeySet, error) {
	if !cfg.DevMode() {
		return auth.LoadJWKS(cfg.JWKS)
	}
	key, created, err := auth.LoadOrCreateDevKey(cfg.DataDir)
	if err != nil {
		return jose.JSONWebKeySet{}, fmt.Errorf("development key: %w", err)
	}
	log.Warn().Bool("created", created).Str("key_file", filepath.Join(cfg.DataDir, auth.DevKeyFile)).
		Str("issuer", cfg.Issuer).Str("audience", cfg.Audience).
		Msg("DEVELOPMENT MODE: trusting a local development signing key; anyone who can read the data directory can mint tokens. Never run this way in production: set --nats-url and --jwks")
	return auth.PublicSet(key), nil
}

// prepareDataDir creates the data directory private to this user, warns
// when an existing one is open to others, and locks it for this process:
// two workers on one data directory would be one member twice.
func prepareDataDir(dir string, log zerolog.Logger) (func(), error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	info, err := os.Stat(dir)
	if err != nil {
		return nil, err
	}
	if info.Mode().Perm()&0o077 != 0 {
		log.Warn().Str("data_dir", dir).Str("mode", info.Mode().Perm().String()).
			Msg("the data directory is readable by other users; it should be 0700")
	}
	return lockDataDir(dir)
}
