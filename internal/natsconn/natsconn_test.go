package natsconn

import (
	"os"
	"path/filepath"
	"testing"

	natsjwt "github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
)

// Each NATS user's connection takes the inbox prefix nats.conf lets it
// subscribe to: _INBOX_<user>, the user named by the URL or by the
// credentials file; an explicit prefix wins; without a user, the ordinary
// _INBOX.
func TestInboxPrefix(t *testing.T) {
	account, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	user, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := user.PublicKey()
	claims := natsjwt.NewUserClaims(pub)
	claims.Name = "passkeys-admin"
	tok, err := claims.Encode(account)
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := user.Seed()
	creds, err := natsjwt.FormatUserConfig(tok, seed)
	if err != nil {
		t.Fatal(err)
	}
	credsFile := filepath.Join(t.TempDir(), "admin.creds")
	if err := os.WriteFile(credsFile, creds, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, prefix, urls, creds, want string
	}{
		{"URLUser", "", "nats://passkeys-service:pw@127.0.0.1:4222", "", "_INBOX_passkeys-service"},
		{"FirstOfSeveralURLs", "", "nats://passkeys-worker:pw@a:4222, nats://passkeys-worker:pw@b:4222", "", "_INBOX_passkeys-worker"},
		{"CredsUser", "", "nats://127.0.0.1:4222", credsFile, "_INBOX_passkeys-admin"},
		{"Explicit", "_INBOX_custom", "nats://passkeys-service:pw@127.0.0.1:4222", "", "_INBOX_custom"},
		{"NoUser", "", "nats://127.0.0.1:4222", "", ""},
		{"UnreadableCreds", "", "nats://127.0.0.1:4222", filepath.Join(t.TempDir(), "missing.creds"), ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := InboxPrefix(tt.prefix, tt.urls, tt.creds); got != tt.want {
				t.Fatalf("InboxPrefix = %q, want %q", got, tt.want)
			}
		})
	}
}
