package trust_test

import (
	"errors"
	"testing"
	"time"

	"github.com/passkeys/worker/auth"
	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/trust"
)

// An entry parses the same from its body everywhere; the eras of a first
// entry judge by time, the first also before its From, and an entry
// without eras judges what came before it by its own set.
func TestEntryFor(t *testing.T) {
	keys := testenv.NewKeys(t)
	rotated := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	e, err := trust.NewEntry(keys.PublicSet("RS256"), testenv.Issuer, testenv.Audience, auth.RuleRFC8032)
	if err != nil {
		t.Fatal(err)
	}
	e.Before = []trust.Era{{Keys: keys.PublicSet("EdDSA"), Issuer: testenv.Issuer, Audience: testenv.Audience},
		{From: rotated, Keys: keys.PublicSet("ES256"), Issuer: "old-issuer", Audience: testenv.Audience}}
	body, err := e.Encode()
	if err != nil {
		t.Fatal(err)
	}
	p, err := trust.Parse(body)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		before bool
		at     time.Time
		kid    string
		iss    string
	}{
		{"after the entry", false, rotated.Add(-time.Hour), "RS256", testenv.Issuer},
		{"before the first era's end", true, rotated.Add(-time.Second), "EdDSA", testenv.Issuer},
		{"from the second era on", true, rotated, "ES256", "old-issuer"},
	} {
		ks := p.For(c.before, c.at)
		if len(ks.Keys.Keys) != 1 || ks.Keys.Keys[0].KeyID != c.kid || ks.Issuer != c.iss {
			t.Errorf("%s: keys %v, issuer %s; want %s, %s", c.name, ks.Keys.Keys, ks.Issuer, c.kid, c.iss)
		}
	}
	plain, _ := trust.NewEntry(keys.PublicSet("RS256"), testenv.Issuer, testenv.Audience, auth.RuleRFC8032)
	if !plain.Same(p) || plain.For(true, rotated) != plain.KeySet() {
		t.Error("an entry without eras does not judge what came before it by its own set, or Same looks at the eras")
	}
	for _, bad := range []string{`{}`, `{"issuer":"i","audience":"a","jwks":{"keys":[]}}`, `not json`,
		`{"issuer":"","audience":"a","jwks":{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}}`} {
		if _, err := trust.Parse([]byte(bad)); err == nil || errors.Is(err, trust.ErrNewer) {
			t.Errorf("Parse(%s): %v, want it refused as no key set", bad, err)
		}
	}
	// A field or a rule this version does not know: a newer version's
	// entry, which its partition waits at.
	good := `"issuer":"i","audience":"a","jwks":{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}`
	for _, newer := range []string{`{` + good + `,"rules":3}`, `{` + good + `,"unknown":1}`, `{` + good + `,"verify":"zip999"}`} {
		if _, err := trust.Parse([]byte(newer)); !errors.Is(err, trust.ErrNewer) {
			t.Errorf("Parse(%s): %v, want ErrNewer", newer, err)
		}
	}
	if e, err := trust.Parse([]byte(`{` + good + `,"verify":"zip215"}`)); err != nil || e.KeySet().Rule != auth.RuleZIP215 {
		t.Errorf("a ZIP 215 entry: %v", err)
	}
}
