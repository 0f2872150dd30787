package app

import (
	"bytes"
	"context"
	"crypto/sha256"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/passkeys/worker/auth"
)

// notifyHUP starts catching SIGHUP, before the worker is reachable: a
// SIGHUP that arrived before would otherwise end the process.
func notifyHUP() (<-chan os.Signal, func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	return hup, func() { signal.Stop(hup) }
}

// watchJWKS reloads the key set file on SIGHUP and whenever its content
// changes (checked every interval), so a key can be rotated in or out
// without a restart: the new set goes into the shared key history, in
// force keySetGrace later, and every worker's watch of the history takes
// it from there. A file that does not load leaves the old keys in force.
func watchJWKS(ctx context.Context, path string, interval time.Duration, hup <-chan os.Signal, h *keyHistory, log zerolog.Logger) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	last := fileHash(path)
	for {
		var why string
		select {
		case <-ctx.Done():
			return
		case <-hup:
			why = "SIGHUP"
		case <-tick.C:
			h := fileHash(path)
			if h == nil || bytes.Equal(h, last) {
				continue
			}
			why = "file changed"
		}
		last = fileHash(path)
		keys, err := auth.LoadJWKS(path)
		if err == nil {
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			if err = h.publish(pctx, keys); err == nil {
				err = h.load(pctx) // at once here; the other workers through their watch
			}
			cancel()
		}
		if err != nil {
			log.Error().Err(err).Str("jwks", path).Str("trigger", why).Msg("JWKS not reloaded; the previous keys stay in force")
			continue
		}
		kids := make([]string, 0, len(keys.Keys))
		for _, k := range keys.Keys {
			kids = append(kids, k.KeyID)
		}
		log.Info().Str("jwks", path).Str("trigger", why).Strs("kids", kids).Msg("JWKS reloaded")
	}
}

// ignoreHUP answers SIGHUP in the development mode, where there is no key
// set file to reload.
func ignoreHUP(ctx context.Context, hup <-chan os.Signal, log zerolog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			log.Info().Msg("SIGHUP: nothing to reload in the development mode (the development key stays); use SIGINT or SIGTERM to stop")
		}
	}
}

func fileHash(path string) []byte {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	h := sha256.Sum256(raw)
	return h[:]
}
