package keyhistory

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/passkeys/worker/auth"
)

// Trusted is a worker's side of the key history: what its own --jwks
// file says, compared with (or, where this worker may, written to) the
// history that every worker judges by.
type Trusted struct {
	History *History
	// Own is this worker's --jwks file (or development key), issuer and
	// audience.
	Own Entry
	// Writes is set where this worker's file goes into the history on a
	// reload: the embedded default, the only worker.
	Writes bool
	Log    zerolog.Logger
	// differs is set while this worker's file differs from the newest set
	// of the history (passkeys_jwks_file_differs).
	differs atomic.Bool
}

// Differs tells whether this worker's file differs from the history's
// newest set.
func (k *Trusted) Differs() bool { return k.differs.Load() }

// keysWaitEvery is how often a worker that found the key history empty,
// and may not write it, looks again.
const keysWaitEvery = 2 * time.Second

// Load reads the history at start-up. An empty history gets this worker's
// own key set where its NATS user may write it (the embedded default, a
// development setup without NATS users); otherwise the worker waits for
// `worker provision --jwks`. In the embedded default the worker's own file
// is the history's newest set (added when it changed). Elsewhere a file
// that differs is a warning and a metric, and an issuer or audience that
// differs refuses the start.
func (k *Trusted) Load(ctx context.Context) error {
	for warned := false; ; {
		err := k.History.Load(ctx)
		if errors.Is(err, ErrEmpty) {
			err = k.seed(ctx)
			if err != nil && !warned {
				k.Log.Warn().Err(err).Msg("the key history is empty and this worker may not write it: waiting for `worker provision --jwks FILE --issuer ISS --audience AUD`")
				warned = true
			}
		} else if err == nil && k.Writes {
			err = k.append(ctx, "the worker's key set file changed")
		}
		if err == nil {
			return k.compare()
		}
		if ctx.Err() != nil {
			return fmt.Errorf("key history: %w", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("key history: %w", err)
		case <-time.After(keysWaitEvery):
		}
	}
}

// seed makes the worker's own key set the first of an empty history.
// Another worker's set may come first (workers started together with
// different files): the history's is the one in force, and compare warns.
func (k *Trusted) seed(ctx context.Context) error {
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	seeded, err := k.History.Seed(sctx, k.Own)
	if seeded {
		k.Log.Info().Int("keys", len(k.Own.Keys.Keys)).Msg("key set added to the empty key history: in force from the beginning")
	}
	return err
}

// append writes the worker's own key set into the history (a no-op when it
// is the newest set already).
func (k *Trusted) append(ctx context.Context, why string) error {
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	key, from, err := k.History.Append(actx, k.Own)
	if err != nil {
		return err
	}
	if key != "" {
		k.Log.Info().Str("entry", key).Time("in_force_from", from).Str("why", why).Int("keys", len(k.Own.Keys.Keys)).
			Msg("key set added to the key history")
	}
	return nil
}

// compare holds this worker's file up to the history's newest set: an
// issuer or audience that differs is an error (the worker would refuse
// every token it is sent); keys that differ a warning and the metric.
func (k *Trusted) compare() error {
	latest, ok := k.History.Latest()
	if !ok {
		return ErrEmpty
	}
	if latest.Issuer != "" && (latest.Issuer != k.Own.Issuer || latest.Audience != k.Own.Audience) {
		return fmt.Errorf("the key history (set by `worker provision --jwks`) requires issuer %q and audience %q, "+
			"but this worker was started with --issuer %q --audience %q: start it with the history's, or provision new ones",
			latest.Issuer, latest.Audience, k.Own.Issuer, k.Own.Audience)
	}
	differs := !Entry{Keys: latest.Keys}.Same(Entry{Keys: k.Own.Keys})
	if k.differs.Swap(differs) != differs || differs {
		ev := k.Log.Info()
		if differs {
			ev = k.Log.Warn()
		}
		ev.Bool("differs", differs).Msg("this worker's --jwks file compared with the newest key set of the key history, which every worker judges by")
	}
	return nil
}

// Watch reads the --jwks file again on SIGHUP and whenever its content
// changes (checked every interval). In the embedded default the new set
// goes into the key history, in force Margin after the server
// stored it; elsewhere the file is only compared with the history (an
// operator rotates with `worker provision --jwks`), at every check, since
// the history changes too. A file that does not load changes nothing.
func (k *Trusted) Watch(ctx context.Context, path string, interval time.Duration, hup <-chan os.Signal) {
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
				_ = k.compare()
				continue
			}
			why = "file changed"
		}
		last = fileHash(path)
		keys, err := auth.LoadJWKS(path)
		if err == nil {
			k.Own.Keys = keys
			if k.Writes {
				err = k.append(ctx, why)
			}
		}
		if err == nil {
			err = k.compare()
		}
		if err != nil {
			k.Log.Error().Err(err).Str("jwks", path).Str("trigger", why).Msg("JWKS not reloaded; the key history is unchanged")
			continue
		}
		kids := make([]string, 0, len(keys.Keys))
		for _, key := range keys.Keys {
			kids = append(kids, key.KeyID)
		}
		k.Log.Info().Str("jwks", path).Str("trigger", why).Strs("kids", kids).Bool("written", k.Writes).Msg("JWKS reloaded")
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
