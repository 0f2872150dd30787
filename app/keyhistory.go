package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/auth"
)

// KeyHistoryBucket is the key-value bucket that holds every key set the
// workers have trusted, each under the time it took effect
// (keyEraKey): so a command is judged, on every worker and at any later
// time, by the keys trusted when the stream stored it.
const KeyHistoryBucket = "PASSKEYS_JWKS"

// keySetGrace is how far in the future a new key set takes effect: every
// worker's watch of the history has that long to learn of it before the
// first command it governs is stored.
const keySetGrace = 5 * time.Second

// keyEraKey is the history's key of a key set in force from t: e. and
// t's Unix nanoseconds, zero-padded, so keys sort by time.
func keyEraKey(t time.Time) string {
	ns := int64(0)
	if !t.IsZero() {
		ns = t.UnixNano()
	}
	return fmt.Sprintf("e.%020d", ns)
}

func keyEraFrom(key string) (time.Time, error) {
	ns, err := strconv.ParseInt(strings.TrimPrefix(key, "e."), 10, 64)
	if err != nil || !strings.HasPrefix(key, "e.") {
		return time.Time{}, fmt.Errorf("key history: bad key %q", key)
	}
	if ns == 0 {
		return time.Time{}, nil
	}
	return time.Unix(0, ns).UTC(), nil
}

// keyHistory is the workers' shared history of key sets.
type keyHistory struct {
	kv  jetstream.KeyValue
	v   *auth.Verifier
	log zerolog.Logger
}

// eras reads the whole history, oldest first.
func (h *keyHistory) eras(ctx context.Context) ([]auth.KeyEra, []string, error) {
	lister, err := h.kv.ListKeysFiltered(ctx, "e.*")
	if err != nil {
		if errors.Is(err, jetstream.ErrNoKeysFound) {
			return nil, nil, nil
		}
		return nil, nil, err
	}
	var keys []string
	for k := range lister.Keys() {
		keys = append(keys, k)
	}
	_ = lister.Stop()
	sort.Strings(keys)
	var eras []auth.KeyEra
	for _, k := range keys {
		e, err := h.kv.Get(ctx, k)
		if err != nil {
			return nil, nil, fmt.Errorf("key history %s: %w", k, err)
		}
		era, err := decodeEra(k, e.Value())
		if err != nil {
			return nil, nil, err
		}
		eras = append(eras, era)
	}
	return eras, keys, nil
}

func decodeEra(key string, value []byte) (auth.KeyEra, error) {
	from, err := keyEraFrom(key)
	if err != nil {
		return auth.KeyEra{}, err
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(value, &set); err != nil {
		return auth.KeyEra{}, fmt.Errorf("key history %s: %w", key, err)
	}
	return auth.KeyEra{From: from, Keys: set}, nil
}

// publish adds keys to the history unless they are the newest entry: in
// force from the start of time when the history is empty (every command
// stored so far was judged by them), else keySetGrace from now.
func (h *keyHistory) publish(ctx context.Context, keys jose.JSONWebKeySet) error {
	raw, err := json.Marshal(keys)
	if err != nil {
		return err
	}
	_, names, err := h.eras(ctx)
	if err != nil {
		return err
	}
	from := time.Time{}
	if len(names) > 0 {
		last, err := h.kv.Get(ctx, names[len(names)-1])
		if err != nil {
			return err
		}
		if bytes.Equal(last.Value(), raw) {
			return nil
		}
		from = time.Now().Add(keySetGrace)
	}
	if _, err := h.kv.Create(ctx, keyEraKey(from), raw); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("key history: %w", err)
	}
	h.log.Info().Str("in_force_from", keyEraKey(from)).Int("keys", len(keys.Keys)).Msg("key set added to the key history")
	return nil
}

// load reads the history into the verifier. The bucket's reads may come
// from a replica a moment behind (a first entry another worker has just
// created), so an empty history is read again for up to 10 s.
func (h *keyHistory) load(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		eras, _, err := h.eras(ctx)
		if err != nil {
			return err
		}
		if len(eras) > 0 {
			return h.v.SetHistory(eras)
		}
		select {
		case <-ctx.Done():
			return errors.New("key history: empty")
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// watch keeps the verifier's history in step with the bucket until ctx
// ends: another worker's rotation reaches this one.
func (h *keyHistory) watch(ctx context.Context) {
	w, err := h.kv.Watch(ctx, "e.*", jetstream.UpdatesOnly())
	if err != nil {
		h.log.Error().Err(err).Msg("cannot watch the key history; reloading it every 10 s instead")
		h.poll(ctx)
		return
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e == nil {
				continue
			}
			if err := h.load(ctx); err != nil {
				h.log.Error().Err(err).Msg("key history not reloaded; the keys known stay in force")
				continue
			}
			h.log.Info().Str("entry", e.Key()).Msg("key history reloaded")
		}
	}
}

func (h *keyHistory) poll(ctx context.Context) {
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if err := h.load(ctx); err != nil {
				h.log.Error().Err(err).Msg("key history not reloaded")
			}
		}
	}
}
