package app

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/term"
)

// Every entry point logs times the same way: RFC 3339 with nanoseconds, as
// the stream's timestamps are written.
func init() { zerolog.TimeFieldFormat = time.RFC3339Nano }

// Log formats of --log-format.
const (
	LogAuto    = "auto"    // console on a terminal, JSON otherwise
	LogJSON    = "json"    // one JSON object a line
	LogConsole = "console" // lines a person reads
)

// NewLogger is the logger of one program (service names it): JSON lines
// on w, or zerolog's console lines when format asks for them, or is auto
// and w is a terminal.
func NewLogger(w io.Writer, format, level, service string) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil || lvl == zerolog.NoLevel {
		return zerolog.Logger{}, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	switch format {
	case LogAuto:
		if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.RFC3339Nano}
		}
	case LogConsole:
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.RFC3339Nano, NoColor: true}
	case LogJSON:
	default:
		return zerolog.Logger{}, fmt.Errorf("--log-format %q: want auto, json or console", format)
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Str("service", service).Logger(), nil
}
