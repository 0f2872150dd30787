package command

import (
	"slices"
	"strings"
	"testing"
)

func TestCheckReplyTo(t *testing.T) {
	for _, tt := range []struct {
		values []string
		ok     bool
	}{
		{nil, true},
		{[]string{"_INBOX.abc.def"}, true},
		{[]string{"replies.svc1"}, true},
		{[]string{"$JS.API.STREAM.PURGE.PASSKEYS"}, false},
		{[]string{"$SYS.REQ.SERVER.PING"}, false},
		{[]string{"passkeys.cmd.remove.u1"}, false},
		{[]string{"_INBOX.*"}, false},
		{[]string{"a.>"}, false},
		{[]string{""}, false},
		{[]string{"a..b"}, false},
		{[]string{"_INBOX.a", "_INBOX.b"}, false},
		{[]string{"_INBOX_passkeys-service.abc"}, true},
		{[]string{"_INBOX." + strings.Repeat("a", 250)}, false},
	} {
		if got := CheckReplyTo(tt.values) == nil; got != tt.ok {
			t.Errorf("CheckReplyTo(%q) ok = %v, want %v", tt.values, got, tt.ok)
		}
	}
}

// Whatever a caller puts in Reply-To, what CheckReplyTo lets through is one
// plain subject the worker may publish to: not in the $ or passkeys
// namespaces, no wildcard, no empty token, bounded.
func FuzzCheckReplyTo(f *testing.F) {
	for _, s := range []string{"_INBOX.abc", "$JS.API.STREAM.PURGE.PASSKEYS", "passkeys.cmd.remove.u1", "a.>", "a..b", " ", "passkeys.", ".x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if CheckReplyTo([]string{s}) != nil {
			return
		}
		if s == "" || len(s) > maxReplyToLen || strings.HasPrefix(s, "$") || strings.HasPrefix(s, "passkeys.") ||
			strings.ContainsAny(s, "*> \t\r\n") || slices.Contains(strings.Split(s, "."), "") {
			t.Fatalf("CheckReplyTo accepted %q", s)
		}
	})
}
