// Package cli parses the command lines of worker and publisher alike:
// flags before and after the arguments ("--" ends them), and flags set by
// environment variables (PASSKEYS_ and the flag's name in upper case, '_'
// for '-'), the command line winning over the environment.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"strings"
)

// EnvName is the environment variable of a flag.
func EnvName(flagName string) string {
	return "PASSKEYS_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// Parse sets fs's flags from the environment (those fromEnv accepts; nil:
// all of them), then from args, and returns the positional arguments. It
// returns flag.ErrHelp when --help was asked for (fs printed the usage).
func Parse(fs *flag.FlagSet, args []string, getenv func(string) string, fromEnv func(name string) bool) ([]string, error) {
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if err != nil || (fromEnv != nil && !fromEnv(f.Name)) {
			return
		}
		if v := getenv(EnvName(f.Name)); v != "" {
			if serr := f.Value.Set(v); serr != nil {
				err = fmt.Errorf("%s=%q: %w", EnvName(f.Name), v, serr)
			}
		}
	})
	if err != nil {
		return nil, err
	}
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos, args = append(pos, rest[0]), rest[1:]
	}
}

// IsHelp tells whether Parse's error was a request for the usage text.
func IsHelp(err error) bool { return errors.Is(err, flag.ErrHelp) }

// ParseFlags is Parse for a command that takes flags only: a positional
// argument is an error. done is set when --help was asked for and answered.
func ParseFlags(fs *flag.FlagSet, args []string, getenv func(string) string) (done bool, err error) {
	pos, err := Parse(fs, args, getenv, nil)
	if IsHelp(err) {
		return true, nil // --help asked for the usage text, and got it
	}
	if err != nil {
		return false, err
	}
	if len(pos) > 0 {
		return false, fmt.Errorf("unexpected argument %q (see --help)", pos[0])
	}
	return false, nil
}
