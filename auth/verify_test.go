package auth_test

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/passkeys/worker/auth"
	"github.com/passkeys/worker/internal/testenv"
	"github.com/passkeys/worker/passkey"
)

var at = time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)

// unsigned builds a token with alg "none".
func unsigned(claims map[string]any) string {
	head := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`))
	body, _ := json.Marshal(claims)
	return head + "." + base64.RawURLEncoding.EncodeToString(body) + "."
}

// signClaims signs arbitrary claims with the EdDSA test key, validly.
func signClaims(tb testing.TB, keys *testenv.Keys, claims map[string]any) string {
	tb.Helper()
	key := keys.Private["EdDSA"]
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: key.Key},
		(&jose.SignerOptions{}).WithHeader("kid", "EdDSA").WithType("JWT"))
	if err != nil {
		tb.Fatal(err)
	}
	body, err := json.Marshal(claims)
	if err != nil {
		tb.Fatal(err)
	}
	jws, err := signer.Sign(body)
	if err != nil {
		tb.Fatal(err)
	}
	tok, err := jws.CompactSerialize()
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

// hmacWithPublicKey signs a token with HS256, using the RSA key's public
// half as the secret: the classic algorithm-confusion attack.
func hmacWithPublicKey(tb testing.TB, keys *testenv.Keys) string {
	tb.Helper()
	pub := keys.Private["RS256"]
	secret, err := x509.MarshalPKIXPublicKey(pub.Public().Key)
	if err != nil {
		tb.Fatal(err)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: secret},
		(&jose.SignerOptions{}).WithHeader("kid", "RS256").WithType("JWT"))
	if err != nil {
		tb.Fatal(err)
	}
	tok, err := jwt.Signed(signer).Claims(jwt.Claims{
		Subject: "u1", Issuer: testenv.Issuer, Audience: jwt.Audience{testenv.Audience},
		Expiry: jwt.NewNumericDate(at.Add(time.Hour)),
	}).Serialize()
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

func TestVerify(t *testing.T) {
	keys := testenv.NewKeys(t)
	v := keys.Verifier(t)
	ks := keys.KeySet(t)
	mint := func(tok testenv.Token) []string {
		if tok.Subject == "" {
			tok.Subject = "u1"
		}
		if tok.Now.IsZero() {
			tok.Now = at
		}
		return []string{testenv.Bearer(keys.Mint(t, tok))}
	}
	other := testenv.NewKeys(t)
	foreign := []string{testenv.Bearer(other.Mint(t, testenv.Token{Subject: "u1", Now: at}))}
	// A token signed by another key under a kid the verifier trusts.
	stolenKid := other.Private["ES256"]
	stolenKid.KeyID = "ES256"
	forged, err := auth.Mint(stolenKid, auth.TokenRequest{Subject: "u1", Issuer: testenv.Issuer, Audience: testenv.Audience, TTL: time.Hour, Now: at})
	if err != nil {
		t.Fatal(err)
	}
	unknownKid := other.Private["EdDSA"]
	unknownKid.KeyID = "retired-key"
	retired, err := auth.Mint(unknownKid, auth.TokenRequest{Subject: "u1", Issuer: testenv.Issuer, Audience: testenv.Audience, TTL: time.Hour, Now: at})
	if err != nil {
		t.Fatal(err)
	}
	noSub, err := auth.Mint(keys.Private["EdDSA"], auth.TokenRequest{Issuer: testenv.Issuer, Audience: testenv.Audience, TTL: time.Hour, Now: at})
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name   string
		header []string
		want   passkey.Principal
		id     string
	}{
		{"RS256", mint(testenv.Token{Kid: "RS256"}), passkey.Principal{Issuer: testenv.Issuer, Subject: "u1"}, ""},
		{"PS256", mint(testenv.Token{Kid: "PS256"}), passkey.Principal{Issuer: testenv.Issuer, Subject: "u1"}, ""},
		{"ES256", mint(testenv.Token{Kid: "ES256"}), passkey.Principal{Issuer: testenv.Issuer, Subject: "u1"}, ""},
		{"EdDSA", mint(testenv.Token{Kid: "EdDSA"}), passkey.Principal{Issuer: testenv.Issuer, Subject: "u1"}, ""},
		{"LowerCaseScheme", []string{"bearer " + keys.Mint(t, testenv.Token{Subject: "u1", Now: at})}, passkey.Principal{Issuer: testenv.Issuer, Subject: "u1"}, ""},
		{"Admin", mint(testenv.Token{Scopes: []string{"openid", auth.ScopeAdmin}, Org: "org1"}), passkey.Principal{Issuer: testenv.Issuer, Subject: "u1", Org: "org1", Admin: true}, ""},
		{"System", mint(testenv.Token{Scopes: []string{auth.ScopeSystem}}), passkey.Principal{Issuer: testenv.Issuer, Subject: "u1", System: true}, ""},
		{"ExpiredWithinLeeway", mint(testenv.Token{Now: at.Add(-time.Hour - 20*time.Second)}), passkey.Principal{Issuer: testenv.Issuer, Subject: "u1"}, ""},
		{"NotYetValidWithinLeeway", mint(testenv.Token{Now: at.Add(20 * time.Second)}), passkey.Principal{Issuer: testenv.Issuer, Subject: "u1"}, ""},
		{"Missing", nil, passkey.Principal{}, passkey.IDAuthMissing},
		{"Twice", append(mint(testenv.Token{}), mint(testenv.Token{})...), passkey.Principal{}, passkey.IDAuthMalformed},
		{"NotBearer", []string{"Basic dTE6cGFzcw=="}, passkey.Principal{}, passkey.IDAuthMalformed},
		{"EmptyBearer", []string{"Bearer "}, passkey.Principal{}, passkey.IDAuthMalformed},
		{"Garbage", []string{"Bearer not.a.jwt"}, passkey.Principal{}, passkey.IDAuthMalformed},
		{"Oversized", []string{"Bearer " + strings.Repeat("a", passkey.MaxTokenSize+1)}, passkey.Principal{}, passkey.IDAuthMalformed},
		{"AlgNone", []string{"Bearer " + unsigned(map[string]any{"sub": "u1", "iss": testenv.Issuer, "aud": testenv.Audience, "exp": at.Add(time.Hour).Unix()})}, passkey.Principal{}, passkey.IDAuthAlgorithm},
		{"HMACWithPublicKey", []string{testenv.Bearer(hmacWithPublicKey(t, keys))}, passkey.Principal{}, passkey.IDAuthAlgorithm},
		{"UnknownKid", []string{testenv.Bearer(retired)}, passkey.Principal{}, passkey.IDAuthKeyUnknown},
		{"BadSignature", []string{testenv.Bearer(forged)}, passkey.Principal{}, passkey.IDAuthSignature},
		{"ForeignKeysSameKids", foreign, passkey.Principal{}, passkey.IDAuthSignature},
		{"WrongIssuer", mint(testenv.Token{Issuer: "https://evil.test"}), passkey.Principal{}, passkey.IDAuthIssuer},
		{"WrongAudience", mint(testenv.Token{Audience: "other-service"}), passkey.Principal{}, passkey.IDAuthAudience},
		{"Expired", mint(testenv.Token{Now: at.Add(-time.Hour - 31*time.Second)}), passkey.Principal{}, passkey.IDAuthExpired},
		{"NotYetValid", mint(testenv.Token{Now: at.Add(31 * time.Second)}), passkey.Principal{}, passkey.IDAuthNotYetValid},
		{"NoSubject", []string{testenv.Bearer(noSub)}, passkey.Principal{}, passkey.IDAuthClaims},
		// Validly signed, but a claim of the wrong type: bad claims, not a bad signature.
		{"ExpAsString", []string{testenv.Bearer(signClaims(t, keys, map[string]any{"sub": "u1", "iss": testenv.Issuer, "aud": testenv.Audience, "exp": "tomorrow"}))}, passkey.Principal{}, passkey.IDAuthClaims},
		{"NumericSub", []string{testenv.Bearer(signClaims(t, keys, map[string]any{"sub": 42, "iss": testenv.Issuer, "aud": testenv.Audience, "exp": at.Add(time.Hour).Unix()}))}, passkey.Principal{}, passkey.IDAuthClaims},
		{"ScopeAsArray", []string{testenv.Bearer(signClaims(t, keys, map[string]any{"sub": "u1", "iss": testenv.Issuer, "aud": testenv.Audience, "exp": at.Add(time.Hour).Unix(), "scope": []string{"passkeys:admin"}}))}, passkey.Principal{}, passkey.IDAuthClaims},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := v.Verify(tt.header, at, ks)
			if tt.id == "" {
				if err != nil {
					t.Fatalf("err = %v", err)
				}
				if got != tt.want {
					t.Errorf("principal = %+v, want %+v", got, tt.want)
				}
				return
			}
			e, ok := err.(*passkey.Error)
			if !ok {
				t.Fatalf("err = %v, want %s", err, tt.id)
			}
			if got, want := e.ID, tt.id; got != want {
				t.Errorf("id = %s, want %s (%s)", got, want, e.Message)
			}
			if got, want := e.Code, passkey.CodeUnauthenticated; got != want {
				t.Errorf("code = %d, want %d", got, want)
			}
		})
	}
}

func TestVerifyRotation(t *testing.T) {
	keys := testenv.NewKeys(t)
	v := keys.Verifier(t)
	ks := keys.KeySet(t)
	tok := []string{testenv.Bearer(keys.Mint(t, testenv.Token{Kid: "ES256", Subject: "u1", Now: at}))}
	if _, err := v.Verify(tok, at, ks); err != nil {
		t.Fatalf("before rotation: %v", err)
	}
	rotated, err := auth.NewKeySet(keys.PublicSet("EdDSA"), testenv.Issuer, testenv.Audience, auth.RuleRFC8032)
	if err != nil {
		t.Fatal(err)
	}
	_, err = v.Verify(tok, at, rotated)
	if e := passkey.AsError(err); e.ID != passkey.IDAuthKeyUnknown {
		t.Fatalf("after rotation: %v, want %s", err, passkey.IDAuthKeyUnknown)
	}
}

func TestLoadJWKSRefusesSecrets(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"empty":     `{"keys":[]}`,
		"symmetric": `{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"s","alg":"HS256"}]}`,
		"notjson":   `{`,
	} {
		path := dir + "/" + name
		if err := writeFile(path, content); err != nil {
			t.Fatal(err)
		}
		if _, err := auth.LoadJWKS(path); err == nil {
			t.Errorf("%s: loaded, want an error", name)
		}
	}
}

func TestDevKey(t *testing.T) {
	dir := t.TempDir()
	key, created, err := auth.LoadOrCreateDevKey(dir)
	if err != nil || !created {
		t.Fatalf("create: %v %v", created, err)
	}
	again, created, err := auth.LoadOrCreateDevKey(dir)
	if err != nil || created || again.KeyID != key.KeyID {
		t.Fatalf("reload: created=%v kid %s/%s err %v", created, again.KeyID, key.KeyID, err)
	}
	info, err := statMode(dir + "/" + auth.DevKeyFile)
	if err != nil || info != 0o600 {
		t.Fatalf("mode %v %v, want 0600", info, err)
	}
	v := auth.NewVerifier()
	ks, err := auth.NewKeySet(auth.PublicSet(key), auth.DevIssuer, auth.DevAudience, auth.RuleRFC8032)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := auth.Mint(key, auth.TokenRequest{Subject: "u1", Issuer: auth.DevIssuer, Audience: auth.DevAudience, TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify([]string{"Bearer " + tok}, time.Now(), ks); err != nil {
		t.Fatal(err)
	}
}

// Whatever arrives in Authorization, Verify answers UNAUTHENTICATED or a
// principal, and never panics.
func FuzzVerify(f *testing.F) {
	keys := testenv.NewKeys(f)
	v := keys.Verifier(f)
	ks := keys.KeySet(f)
	f.Add("Bearer " + keys.Mint(f, testenv.Token{Subject: "u1", Now: at}))
	f.Add("Bearer " + unsigned(map[string]any{"sub": "u1"}))
	f.Add("Bearer eyJhbGciOiJIUzI1NiJ9.e30.c2ln")
	f.Add("Bearer a.b.c")
	f.Add("bearer ")
	f.Add("Basic x")
	f.Fuzz(func(t *testing.T, header string) {
		p, err := v.Verify([]string{header}, at, ks)
		if err != nil {
			if e := passkey.AsError(err); e.Code != passkey.CodeUnauthenticated {
				t.Fatalf("error %v is not UNAUTHENTICATED", err)
			}
			return
		}
		if p.Subject == "" {
			t.Fatal("a principal without a subject")
		}
	})
}

// Each token is judged by the key set it is given, whichever sets judged
// it before: the cache never answers for one key set what another decided.
func TestCachePerKeySet(t *testing.T) {
	keys := testenv.NewKeys(t)
	v := keys.Verifier(t)
	setA, errA := auth.NewKeySet(keys.PublicSet("EdDSA"), testenv.Issuer, testenv.Audience, auth.RuleRFC8032)
	setB, errB := auth.NewKeySet(keys.PublicSet("ES256"), testenv.Issuer, testenv.Audience, auth.RuleRFC8032)
	if errA != nil || errB != nil || setA.ID == setB.ID {
		t.Fatalf("key sets: %v %v, IDs %d %d", errA, errB, setA.ID, setB.ID)
	}
	old := []string{testenv.Bearer(keys.Mint(t, testenv.Token{Kid: "EdDSA", Subject: "u1", Now: at}))}
	fresh := []string{testenv.Bearer(keys.Mint(t, testenv.Token{Kid: "ES256", Subject: "u1", Now: at}))}
	for _, c := range []struct {
		name string
		tok  []string
		set  *auth.KeySet
		want error
	}{
		{"OldKeyBeforeRotation", old, setA, nil},
		{"OldKeyAfterRotation", old, setB, passkey.ErrAuthKeyUnknown},
		{"OldKeyBeforeRotationAgain", old, setA, nil}, // the cache does not carry the refusal over
		{"NewKeyAfterRotation", fresh, setB, nil},
		{"NewKeyBeforeRotation", fresh, setA, passkey.ErrAuthKeyUnknown},
		{"NewKeyAfterRotationAgain", fresh, setB, nil},
	} {
		if _, err := v.Verify(c.tok, at, c.set); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	if _, err := auth.NewKeySet(keys.PublicSet(), testenv.Issuer, testenv.Audience, auth.RuleRFC8032); err == nil {
		t.Error("an empty key set accepted")
	}
}
