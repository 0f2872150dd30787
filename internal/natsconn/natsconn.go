// Package natsconn holds what every program of the service needs to
// connect to NATS as the shipped nats.conf expects: its own inbox prefix,
// and URLs fit to log.
package natsconn

import (
	"net/url"
	"os"
	"strings"

	natsjwt "github.com/nats-io/jwt/v2"
)

// InboxPrefix is the inbox prefix a connection uses: prefix when set,
// otherwise _INBOX_<user> when the first URL names a user or the
// credentials file's user JWT has a name (nats.conf lets each user
// subscribe only below its own prefix, so no user receives another's
// commands, replies or tokens), otherwise "" (the ordinary _INBOX, as on
// the embedded development server).
func InboxPrefix(prefix, urls, credsFile string) string {
	if prefix != "" {
		return prefix
	}
	first, _, _ := strings.Cut(urls, ",")
	if u, err := url.Parse(strings.TrimSpace(first)); err == nil && u.User != nil && u.User.Username() != "" {
		return "_INBOX_" + u.User.Username()
	}
	if credsFile != "" {
		if raw, err := os.ReadFile(credsFile); err == nil {
			if tok, err := natsjwt.ParseDecoratedJWT(raw); err == nil {
				if uc, err := natsjwt.DecodeUserClaims(tok); err == nil && uc.Name != "" {
					return "_INBOX_" + uc.Name
				}
			}
		}
	}
	return ""
}

// RedactURL hides passwords and tokens in NATS URLs before they are logged
// or shown.
func RedactURL(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			parts[i] = u.Redacted()
			if _, hasPass := u.User.Password(); !hasPass {
				u.User = url.User("redacted")
				parts[i] = u.String()
			}
		}
	}
	return strings.Join(parts, ",")
}
