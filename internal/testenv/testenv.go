// Package testenv gives tests real parts: an in-process NATS server with
// JetStream on a random port, and signing keys with a JWKS file.
package testenv

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/passkeys/worker/auth"
	"github.com/passkeys/worker/internal/freeaddr"
	"github.com/passkeys/worker/storage"
	"github.com/passkeys/worker/topology"
	"github.com/passkeys/worker/trust"
)

// Issuer and Audience the test keys' tokens carry.
const (
	Issuer   = "https://issuer.test"
	Audience = "passkeys-test"
)

// FreeAddr is a loopback address with a port nobody listened on a moment
// ago, for a process or listener the test starts next (freeaddr.Loopback:
// below the ephemeral range; another test process may still take it
// meanwhile: a test that starts a server there says so when it fails).
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	addr, err := freeaddr.Loopback()
	if err != nil {
		tb.Fatal(err)
	}
	return addr
}

// StartNATS starts a NATS server with JetStream on a random loopback port,
// stored under a temporary directory, and stops it when the test ends.
func StartNATS(tb testing.TB) *server.Server {
	tb.Helper()
	return StartNATSAt(tb, tb.TempDir())
}

// StartNATSAt is StartNATS with the JetStream store in dir.
func StartNATSAt(tb testing.TB, dir string) *server.Server {
	tb.Helper()
	return start(tb, &server.Options{JetStream: true, StoreDir: dir})
}

// Passwords are what StartNATSWithUsers gives nats.conf's three users.
var Passwords = map[string]string{"passkeys-worker": "w-secret", "passkeys-service": "s-secret", "passkeys-admin": "a-secret",
	"passkeys-provisioner": "p-secret"}

// StartNATSWithUsers starts a server from the project's nats.conf (at
// path), its users' passwords set to Passwords, on a random loopback port.
func StartNATSWithUsers(tb testing.TB, path string) *server.Server {
	tb.Helper()
	setPasswords()
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	opts.StoreDir = tb.TempDir()
	return start(tb, opts)
}

// setPasswords puts Passwords where nats.conf reads them, once for the
// test process: the same values for every test, so tests that start
// servers with users may run in parallel (t.Setenv would forbid it).
var setPasswords = sync.OnceFunc(func() {
	for user, env := range map[string]string{"passkeys-worker": "PASSKEYS_WORKER_NATS_PASSWORD",
		"passkeys-service": "PASSKEYS_SERVICE_NATS_PASSWORD", "passkeys-admin": "PASSKEYS_ADMIN_NATS_PASSWORD",
		"passkeys-provisioner": "PASSKEYS_PROVISIONER_NATS_PASSWORD"} {
		if err := os.Setenv(env, Passwords[user]); err != nil {
			panic(err)
		}
	}
})

// UserURL is url with user's name and password of Passwords in it.
func UserURL(url, user string) string {
	return strings.Replace(url, "nats://", "nats://"+user+":"+Passwords[user]+"@", 1)
}

// start runs a server with opts on a random loopback port until the test ends.
func start(tb testing.TB, opts *server.Options) *server.Server {
	tb.Helper()
	opts.Host, opts.Port, opts.NoLog, opts.NoSigs = "127.0.0.1", server.RANDOM_PORT, true, true
	ns, err := server.NewServer(opts)
	if err != nil {
		tb.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		tb.Fatal("NATS server did not start")
	}
	tb.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns
}

// Connect connects a client to url, closed when the test ends.
func Connect(tb testing.TB, url string, opts ...nats.Option) *nats.Conn {
	tb.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(nc.Close)
	return nc
}

// Keys holds one private key per allowed algorithm, keyed by kid (which is
// the algorithm's name), and a JWKS file of their public halves.
type Keys struct {
	Private  map[string]jose.JSONWebKey
	JWKSPath string
}

// NewKeys makes keys for RS256, PS256, ES256 and EdDSA and writes their JWKS.
func NewKeys(tb testing.TB) *Keys {
	tb.Helper()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		tb.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	k := &Keys{Private: map[string]jose.JSONWebKey{
		"RS256": {Key: rsaKey, KeyID: "RS256", Algorithm: "RS256", Use: "sig"},
		"PS256": {Key: rsaKey, KeyID: "PS256", Algorithm: "PS256", Use: "sig"},
		"ES256": {Key: ecKey, KeyID: "ES256", Algorithm: "ES256", Use: "sig"},
		"EdDSA": {Key: edKey, KeyID: "EdDSA", Algorithm: "EdDSA", Use: "sig"},
	}}
	k.JWKSPath = filepath.Join(tb.TempDir(), "jwks.json")
	k.WriteJWKS(tb, "RS256", "PS256", "ES256", "EdDSA")
	return k
}

// PublicSet is the public halves of the named keys.
func (k *Keys) PublicSet(kids ...string) jose.JSONWebKeySet {
	var set jose.JSONWebKeySet
	for _, kid := range kids {
		key := k.Private[kid]
		set.Keys = append(set.Keys, key.Public())
	}
	return set
}

// WriteJWKS rewrites the JWKS file with the public halves of the named keys.
func (k *Keys) WriteJWKS(tb testing.TB, kids ...string) {
	tb.Helper()
	set := k.PublicSet(kids...)
	raw, err := json.Marshal(set)
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(k.JWKSPath, raw, 0o600); err != nil {
		tb.Fatal(err)
	}
}

// Verifier is a verifier for tests (it holds no keys: see Trust and
// KeySet).
func (k *Keys) Verifier(tb testing.TB) *auth.Verifier { return auth.NewVerifier() }

// entry is the control entry that trusts the keys' JWKS file, with the
// test issuer and audience.
func (k *Keys) entry(tb testing.TB) *trust.Entry {
	tb.Helper()
	set, err := auth.LoadJWKS(k.JWKSPath)
	if err != nil {
		tb.Fatal(err)
	}
	e, err := trust.NewEntry(set, Issuer, Audience, auth.RuleRFC8032)
	if err != nil {
		tb.Fatal(err)
	}
	return e
}

// KeySet is the key set of the keys' JWKS file.
func (k *Keys) KeySet(tb testing.TB) *auth.KeySet { return k.entry(tb).KeySet() }

// Trust makes store trust the keys' JWKS file for every command, as a
// control entry before the stream's first message would, and returns it.
func (k *Keys) Trust(tb testing.TB, store *storage.Store) *storage.Store {
	tb.Helper()
	body, err := k.entry(tb).Encode()
	if err == nil {
		err = store.Update(func(tx *storage.Tx) error { return tx.PutControl(0, body) })
	}
	if err != nil {
		tb.Fatal(err)
	}
	return store
}

// Token is what a test token claims; zero fields take test defaults.
type Token struct {
	Kid      string // default EdDSA
	Subject  string
	Org      string
	Scopes   []string
	Issuer   string
	Audience string
	TTL      time.Duration
	Now      time.Time
}

// Mint signs t.
func (k *Keys) Mint(tb testing.TB, t Token) string {
	tb.Helper()
	if t.Kid == "" {
		t.Kid = "EdDSA"
	}
	if t.Issuer == "" {
		t.Issuer = Issuer
	}
	if t.Audience == "" {
		t.Audience = Audience
	}
	if t.TTL == 0 {
		t.TTL = time.Hour
	}
	tok, err := auth.Mint(k.Private[t.Kid], auth.TokenRequest{
		Subject: t.Subject, Org: t.Org, Scopes: t.Scopes, Issuer: t.Issuer, Audience: t.Audience, TTL: t.TTL, Now: t.Now,
	})
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

// Bearer is the Authorization header value for tok.
func Bearer(tok string) string { return "Bearer " + tok }

// SuccessBody is the details reply of a remove or sync.
type SuccessBody struct {
	Details struct {
		Sequence      string `json:"sequence"`
		CreationDate  string `json:"creationDate"`
		ChangeDate    string `json:"changeDate"`
		ResourceOwner string `json:"resourceOwner"`
	} `json:"details"`
}

type errorBody struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Details []struct {
		Type    string `json:"@type"`
		ID      string `json:"id"`
		Message string `json:"message"`
	} `json:"details"`
}

// WantSuccess decodes a success reply and checks it carries no error header.
func WantSuccess(tb testing.TB, msg *nats.Msg) SuccessBody {
	tb.Helper()
	if code := msg.Header.Get("Nats-Service-Error-Code"); code != "" {
		tb.Fatalf("error reply %s: %s", code, msg.Data)
	}
	var b SuccessBody
	if err := json.Unmarshal(msg.Data, &b); err != nil || b.Details.Sequence == "" {
		tb.Fatalf("not a success reply: %s (%v)", msg.Data, err)
	}
	return b
}

// WantError checks an error reply: the gRPC code and id in the body, and
// the HTTP status and message in the Nats-Service-Error headers.
func WantError(tb testing.TB, msg *nats.Msg, code int, id, http string) {
	tb.Helper()
	var b errorBody
	if err := json.Unmarshal(msg.Data, &b); err != nil {
		tb.Fatalf("not an error reply: %s (%v)", msg.Data, err)
	}
	if b.Code != code || len(b.Details) != 1 || b.Details[0].ID != id {
		tb.Fatalf("reply %s, want code %d id %s", msg.Data, code, id)
	}
	if b.Details[0].Type != "type.googleapis.com/zitadel.v1.ErrorDetail" || b.Message != b.Details[0].Message+" ("+id+")" {
		tb.Errorf("error body shape: %s", msg.Data)
	}
	if got := msg.Header.Get("Nats-Service-Error-Code"); got != http {
		tb.Errorf("Nats-Service-Error-Code = %q, want %q", got, http)
	}
	if got := msg.Header.Get("Nats-Service-Error"); got != b.Message {
		tb.Errorf("Nats-Service-Error = %q, want %q", got, b.Message)
	}
	if strings.Contains(string(msg.Data), "goroutine") || strings.Contains(string(msg.Data), ".go:") {
		tb.Errorf("reply looks like it holds a stack trace: %s", msg.Data)
	}
}

// SyncBuffer collects what several goroutines write, such as a worker's
// log lines.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// MustOpenStore opens a store in a temporary directory, closed when the
// test ends.
func MustOpenStore(tb testing.TB) *storage.Store {
	tb.Helper()
	s, err := storage.Open(filepath.Join(tb.TempDir(), "passkeys.db"), storage.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

// Logger is a logger that writes to the test's log.
func Logger(tb testing.TB) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(tb)).With().Timestamp().Logger()
}

// Settings are the JetStream settings of a test with n partitions: short
// retentions, one replica.
func Settings(n int) topology.Settings {
	return topology.Settings{Retention: time.Hour, DuplicateWindow: time.Minute, EventsRetention: time.Hour, EventsDuplicates: time.Hour,
		Partitions: n, Replicas: 1}
}
