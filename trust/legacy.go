package trust

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/auth"
	"github.com/passkeys/worker/internal/jsread"
	"github.com/passkeys/worker/topology"
)

// legacyMargin is how long after the NATS server stored a key set the
// version before put it in force.
const legacyMargin = 5 * time.Second

// Legacy reads the key history of the version before (stream
// topology.KeyStream), when there is one, into the eras it put in force,
// in order: a set it provisioned (key set.<n>) from legacyMargin after the
// server stored it, the first of all from the beginning; a set of the
// version before that (key e.<unix nanos>, only ahead of the first
// provisioned one) from the time its key names. An entry that is not a key
// set, a key written again and a delete marker change nothing, as then. It
// returns nil when there is no history.
func Legacy(ctx context.Context, js jetstream.JetStream, log zerolog.Logger) ([]Era, error) {
	if _, err := js.Stream(ctx, topology.KeyStream); errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("the key history %s: %w", topology.KeyStream, err)
	}
	r := jsread.New(js, topology.KeyStream, false)
	var eras []Era
	seen := map[string]bool{}
	provisioned := false
	for seq := uint64(1); ; {
		m, err := r.Next(ctx, seq, topology.KeyPrefix+".>")
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return eras, nil
		}
		if err != nil {
			return nil, fmt.Errorf("the key history %s: %w", topology.KeyStream, err)
		}
		seq = m.Sequence + 1
		key := strings.TrimPrefix(m.Subject, topology.KeyPrefix+".")
		if seen[key] || m.Header.Get("KV-Operation") != "" {
			continue
		}
		seen[key] = true
		era, err := legacyEra(key, m.Data, m.Time, provisioned, len(eras) == 0)
		if err != nil {
			log.Error().Err(err).Str("entry", key).Msg("an entry of the old key history is not a key set in force; it is left out, as it was")
			continue
		}
		if strings.HasPrefix(key, "set.") {
			provisioned = true
		}
		if n := len(eras); n > 0 && era.From.Before(eras[n-1].From) {
			era.From = eras[n-1].From
		}
		eras = append(eras, era)
	}
}

// legacyEra decodes one entry of the old key history, stored at created.
func legacyEra(key string, value []byte, created time.Time, provisioned, first bool) (Era, error) {
	if strings.HasPrefix(key, "set.") {
		var e Entry
		if err := json.Unmarshal(value, &e); err != nil {
			return Era{}, err
		}
		if _, err := auth.NewKeySet(e.Keys, e.Issuer, e.Audience, auth.RuleRFC8032); err != nil {
			return Era{}, err
		}
		era := Era{From: created.Add(legacyMargin).UTC(), Issuer: e.Issuer, Audience: e.Audience, Keys: e.Keys}
		if first {
			era.From = time.Time{}
		}
		return era, nil
	}
	ns, err := strconv.ParseInt(strings.TrimPrefix(key, "e."), 10, 64)
	if !strings.HasPrefix(key, "e.") || err != nil {
		return Era{}, errors.New("not a key of the history")
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(value, &set); err != nil {
		return Era{}, err
	}
	if err := auth.CheckKeySet(set); err != nil {
		return Era{}, err
	}
	era := Era{Keys: set}
	if ns != 0 {
		era.From = time.Unix(0, ns).UTC()
	}
	switch {
	case provisioned:
		return Era{}, errors.New("an entry in the form of the version before, after a provisioned set")
	case era.From.IsZero() && !first:
		return Era{}, errors.New("an entry of the version before in force from the beginning, after another")
	case !era.From.IsZero() && era.From.Before(created):
		return Era{}, errors.New("an entry of the version before in force before it was stored")
	}
	return era, nil
}

// FromLegacy is the first control entry of a stream whose key history is
// eras (Legacy): the newest era's set, in force after it, and every era
// for the commands before it. An era that names no issuer or audience (the
// oldest form: the workers' own were meant) takes issuer and audience.
// nil when there are no eras.
func FromLegacy(eras []Era, issuer, audience string) (*Entry, error) {
	if len(eras) == 0 {
		return nil, nil
	}
	for i := range eras {
		if eras[i].Issuer == "" || eras[i].Audience == "" {
			eras[i].Issuer, eras[i].Audience = issuer, audience
		}
	}
	newest := eras[len(eras)-1]
	e, err := NewEntry(newest.Keys, newest.Issuer, newest.Audience, auth.RuleRFC8032)
	if err != nil {
		return nil, fmt.Errorf("the old key history's newest set: %w (provision with --jwks, --issuer and --audience)", err)
	}
	e.Before = eras
	return e, nil
}
