package app

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// --log-format: JSON lines by default off a terminal (auto), lines a person
// reads with console; a bad format or level is a configuration error.
func TestNewLogger(t *testing.T) {
	for _, tt := range []struct {
		format   string
		wantJSON bool
	}{{LogAuto, true}, {LogJSON, true}, {LogConsole, false}} {
		t.Run(tt.format, func(t *testing.T) {
			var buf bytes.Buffer
			log, err := NewLogger(&buf, tt.format, "info", "passkeys-worker")
			if err != nil {
				t.Fatal(err)
			}
			log.Info().Str("user_id", "u1").Msg("command processed")
			log.Debug().Msg("below the level")
			line := strings.TrimSpace(buf.String())
			var ev struct{ Level, Time, Message, Service string }
			isJSON := json.Unmarshal([]byte(line), &ev) == nil
			if isJSON != tt.wantJSON || !strings.Contains(line, "command processed") || strings.Contains(line, "below the level") {
				t.Fatalf("log line %q", line)
			}
			if isJSON && (ev.Level != "info" || ev.Service != "passkeys-worker" || !strings.Contains(ev.Time, "T")) {
				t.Fatalf("JSON event %+v", ev)
			}
		})
	}
	if _, err := NewLogger(&bytes.Buffer{}, "xml", "info", "x"); err == nil {
		t.Error("--log-format xml accepted")
	}
	if _, err := NewLogger(&bytes.Buffer{}, LogJSON, "loud", "x"); err == nil {
		t.Error("--log-level loud accepted")
	}
}
